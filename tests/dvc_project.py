"""The real DVC project in a temp git repo, on shrunk params: shared by the tests that run dvc.

`reproduced(tmp_path_factory)` runs the whole pipeline once per test session; each test then
works on its own `copy_project` of it, so the pipeline is not reproduced once per test module.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from snakeid.config import TRACE_ENV, merge_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtualenv running the tests has dvc and python

# Small enough to run in about a minute, large enough that every stage has real work.
SHRUNK = {
    "base": {"image_size": 96},
    "download": {"demo": {"observations_common": 6, "observations_rare": 3}},
    "data": {"views": 1, "batch_size": 16},
    "train_head": {"epochs": 2},
    "finetune": {"epochs": 1},
    "evaluate": {"bootstrap": 100},
    # the gates at their defaults: tests/test_gates.py checks they hold on another CPU's floats
    "quantize": {"calibration_images": 8, "latency_runs": 2},
}

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
OUTPUT_DIRS = ("metrics", "plots", "reports", "dvclive")  # the stages' git-tracked outputs


def run(
    cmd: list[str],
    cwd: Path,
    check: bool = True,
    timeout: float = 900,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    env = (
        os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"} | (env or {})
    )
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def ran_stages(output: str) -> set[str]:
    return set(stages_run(output))


def stages_run(output: str) -> list[str]:
    """The stages a `dvc repro` / `dvc exp run` log says it ran, in order."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def commit(root: Path, message: str) -> None:
    run([*GIT, "add", "-A"], root)
    run([*GIT, "commit", "-qm", message], root)


def make_project(
    root: Path, overrides: dict = SHRUNK, *, repo: Path = REPO, skip: tuple[str, ...] = ()
) -> Path:
    """A copy of `repo`'s files (tracked, and untracked but not ignored; none under a `skip`
    prefix unless a stage depends on it) as a fresh git repo, with `overrides` merged into
    params.yaml and no outputs of a previous run. The tests and the benchmark build their
    projects with it."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values()
    deps = {d for stage in stages for d in stage.get("deps", []) if isinstance(d, str)}
    for rel in files:
        if (repo / rel).is_file() and (rel in deps or not rel.startswith(skip)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / rel, root / rel)
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(
        yaml.safe_dump(merge_params(params, overrides), sort_keys=False)
    )
    (root / "dvc.lock").unlink(missing_ok=True)
    for d in OUTPUT_DIRS:  # the committed run's outputs
        shutil.rmtree(root / d, ignore_errors=True)
    run(["git", "init", "-q"], root)
    commit(root, "init")
    return root


_REPRODUCED: dict[str, Path] = {}


def reproduced(tmp_path_factory) -> Path:
    """The shrunk project after one `dvc repro` of all stages, committed (built once a session).

    Its `first_repro.log` holds that run's output, and `params_read(root)` every params key each
    stage read in it. Tests must not change it: use `copy_project`.
    """
    if "root" not in _REPRODUCED:
        root = make_project(tmp_path_factory.mktemp("dvc-project") / "snakeid")
        first = run(["dvc", "repro"], root, env={TRACE_ENV: str(params_read_file(root))})
        (root / "first_repro.log").write_text(first.stdout)
        commit(root, "repro")
        _REPRODUCED["root"] = root
    return _REPRODUCED["root"]


def params_read_file(root: Path) -> Path:
    """Where the first repro of `root` recorded the params its stages read (beside the repo)."""
    return root.parent / "params_read.tsv"


def stage_argv(root: Path, stage: str, paths: dict[str, str] | None = None) -> list[str]:
    """A stage's `dvc.yaml` command as DVC runs it in `root`: `${...}` filled from its `vars`
    and params.yaml, `paths` replacing some of the `paths` var."""
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    context = yaml.safe_load((root / "params.yaml").read_text())
    for v in dvc.get("vars", []):
        if isinstance(v, dict):
            context = merge_params(context, v)
    context["paths"] = context.get("paths", {}) | (paths or {})

    def lookup(m: re.Match[str]) -> str:
        value: Any = context
        for part in m.group(1).split("."):
            value = value[part]
        return str(value)

    return shlex.split(re.sub(r"\$\{([\w.]+)\}", lookup, dvc["stages"][stage]["cmd"]))


def copy_project(src: Path, dest: Path) -> Path:
    """An independent copy (workspace, git history, DVC cache) of a reproduced project."""

    def per_checkout(folder: str, names: list[str]) -> list[str]:
        # .dvc/tmp holds per-checkout state (locks, the hash index, queue workers): start clean
        return ["tmp"] if Path(folder).name == ".dvc" else []

    shutil.copytree(src, dest, symlinks=True, ignore=per_checkout)
    return dest
