"""The benchmark's own copy of the project, and subprocesses watched for time, CPU and memory.

The benchmark never runs `dvc repro` in the working tree: it copies the repository's files
(tracked and untracked-but-not-ignored, like the end-to-end test) into a fresh git repo and
runs the pipeline there, so it cannot disturb anyone's data/, models/ or metrics/. Subprocesses
get `PYTHONPATH=<copy>/src` so they run the copied snapshot of the library even if the working
tree changes during the run.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import dvc_project  # noqa: E402  (tests/dvc_project.py: the project copy, one home for both)

BIN = Path(sys.executable).parent  # the virtualenv running the benchmark has dvc and python


def env(root: Path) -> dict[str, str]:
    return os.environ | {
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(root / "src"),
        "DVC_NO_ANALYTICS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def make_project(repo: Path, root: Path, overrides: dict[str, Any]) -> Path:
    """The tests' project copy (tests/dvc_project.py) without bench/ (but for the results a
    stage reads): a fresh git repo."""
    return dvc_project.make_project(root, overrides, repo=repo, skip=("bench/",))


# ---------------------------------------------------------------------------------------------
# Watching a process tree


def _hwm_bytes(pid: int) -> int:
    """Peak resident set size so far (VmHWM) of one process, from /proc; 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class _Proc:
    cmdline: str
    created: float
    last_seen: float = 0.0
    cpu_s: float = 0.0
    hwm: int = 0


@dataclass
class Watched:
    """A finished subprocess: its wall time, and per labelled descendant time, CPU and memory."""

    cmd: list[str]
    returncode: int
    wall_s: float
    cpu_s: float  # user + system of the whole tree (rusage of the waited child)
    peak_rss_mb: float  # VmHWM of the largest single process in the tree
    log: str
    labels: dict[str, dict[str, float]] = field(default_factory=dict)


def run_watched(
    cmd: list[str],
    cwd: Path,
    log_path: Path,
    labels: dict[str, str] | None = None,
    interval: float = 0.1,
) -> Watched:
    """Run `cmd`; `labels` maps a name to a substring of the command line of the descendant
    processes it stands for (e.g. 'train_head' → 'stages/train_head.py'). For each label:
    wall (first start to last sighting), CPU (user + system, summed over its processes) and
    peak RSS (largest VmHWM, which the kernel keeps exactly, so sampling misses no peak)."""
    labels = labels or {}
    procs: dict[int, _Proc] = {}
    done = threading.Event()
    with open(log_path, "w") as log:
        started = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=env(cwd), stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(p.pid)

        def poll() -> None:
            while not done.is_set():
                try:
                    tree = [root, *root.children(recursive=True)]
                except psutil.Error:
                    tree = []
                now = time.time()
                for q in tree:
                    try:
                        info = procs.get(q.pid)
                        if info is None:
                            info = procs[q.pid] = _Proc("", q.create_time())
                        # Every command line the pid shows: it changes at each exec (`env`,
                        # snakeid.train.distributed) and reads empty while one is in progress.
                        cmdline = " ".join(q.cmdline())
                        if cmdline and cmdline not in info.cmdline:
                            info.cmdline += f" | {cmdline}"
                        t = q.cpu_times()
                        info.cpu_s = t.user + t.system
                        info.hwm = max(info.hwm, _hwm_bytes(q.pid))
                        info.last_seen = now
                    except psutil.Error:
                        continue
                done.wait(interval)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - started
        done.set()
        watcher.join()
        p.returncode = os.waitstatus_to_exitcode(status)
    per_label = {}
    for name, needle in labels.items():
        mine = [q for q in procs.values() if needle in q.cmdline and q.last_seen]
        if mine:
            per_label[name] = {
                "wall_s": max(q.last_seen for q in mine) - min(q.created for q in mine),
                "cpu_s": sum(q.cpu_s for q in mine),
                "peak_rss_mb": max(q.hwm for q in mine) / 2**20,
            }
    return Watched(
        cmd=cmd,
        returncode=p.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        # not usage.ru_maxrss: a forked child starts with its parent's high-water mark
        peak_rss_mb=max([q.hwm for q in procs.values()], default=0) / 2**20,
        log=log_path.read_text(),
        labels=per_label,
    )


def check(w: Watched) -> Watched:
    if w.returncode:
        raise RuntimeError(f"{' '.join(w.cmd)} failed ({w.returncode}):\n{w.log[-4000:]}")
    return w


def dvc_paths(root: Path) -> dict[str, str]:
    """The `paths` that dvc.yaml names once (split, features, head, ...)."""
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    found: dict[str, str] = {}
    for v in dvc.get("vars", []):
        if isinstance(v, dict):
            found |= v.get("paths", {})
    return found


def stage_command(
    root: Path, stage: str, paths: dict[str, str], scratch: Path, params_file: Path
) -> list[str]:
    """A stage's `dvc.yaml` command with some `paths` replaced, its literal outputs in
    dvc_project.OUTPUT_DIRS sent to `scratch`, reading `params_file`: the stage as DVC runs
    it, on other data, without touching the project's outputs."""
    argv = dvc_project.stage_argv(root, stage, paths)
    argv = [
        str(scratch / f"{stage}_{Path(a).name}")
        if a.startswith(tuple(f"{d}/" for d in dvc_project.OUTPUT_DIRS))
        else a
        for a in argv
    ]
    return [*argv, "--params", str(params_file)]


def noop_repro(root: Path, scratch: Path, runs: int) -> dict[str, Any]:
    """Wall time of `dvc repro` with nothing changed (each run must run no stage)."""
    walls, stray = [], []
    for i in range(runs):
        w = check(run_watched(["dvc", "repro"], root, scratch / f"noop_{i}.log"))
        walls.append(w.wall_s)
        stray += dvc_project.stages_run(w.log)
    return {"runs_s": walls, "median_s": statistics.median(walls), "stages_rerun": stray}
