"""DVC's experiment queue: a two-point grid, queued, run by two workers, listed by exp show."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dvc_project import copy_project, reproduced, run

GRID = [19, 99]  # finetune.venomous_cost_ratio: finetune and the stages after it re-run


def _experiments(shown: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{experiment name: its params.yaml} from `dvc exp show --json` (baselines excluded)."""
    found = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                found[rev["name"]] = rev["data"]["params"]["params.yaml"]["data"]
    return found


STALL_S = 60  # queued experiments and none running this long: the workers stopped early
RESTARTS = 3


def _wait_for_queue(project: Path, timeout_s: float) -> str:
    """Poll `dvc queue status` until nothing is queued or running; return the last status.

    DVC's queue can stop its workers with experiments still queued (treeverse/dvc#10562); the
    README tells users to run `dvc queue start` again, and so does this, at most RESTARTS
    times. A timeout shows the celery workers' own logs, where a worker says why it stopped.
    """
    deadline = time.monotonic() + timeout_s
    stalled_since, restarts = None, 0
    while True:
        status = run(["dvc", "queue", "status"], project).stdout
        tasks = [line.split() for line in status.splitlines()[1:] if line.strip()]
        busy = [t for t in tasks if {"Queued", "Running"} & set(t)]
        if not busy:
            return status
        now = time.monotonic()
        if any("Running" in t for t in busy):
            stalled_since = None
        elif stalled_since is None:
            stalled_since = now
        elif now - stalled_since > STALL_S and restarts < RESTARTS:
            run(["dvc", "queue", "start"], project)
            stalled_since, restarts = None, restarts + 1
            warnings.warn(
                f"dvc queue stalled with experiments queued: restart {restarts}\n{status}",
                stacklevel=2,
            )
        if now > deadline:
            logs = "\n".join(
                f"--- {f.name}:\n{f.read_text()[-3000:]}"
                for f in sorted((project / ".dvc/tmp/exps/celery").glob("*.out"))
            )
            raise AssertionError(
                f"queue not done after {timeout_s}s ({restarts} restarts):\n{status}\n{logs}"
            )
        time.sleep(5)


@pytest.fixture
def project(tmp_path_factory, tmp_path) -> Iterator[Path]:
    root = copy_project(reproduced(tmp_path_factory), tmp_path / "snakeid")
    yield root
    # Leave nothing running: the workers would otherwise idle out on their own after ~10 s.
    run(["dvc", "queue", "stop", "--kill"], root, check=False)
    deadline = time.monotonic() + 60
    while "Worker status: 0 active" not in run(["dvc", "queue", "status"], root).stdout:
        assert time.monotonic() < deadline, "queue workers still running"
        time.sleep(2)


@pytest.mark.slow
def test_queued_grid_finishes_and_exp_show_lists_both_points(project):
    values = ",".join(str(v) for v in GRID)
    queued = run(
        ["dvc", "exp", "run", "--queue", "-S", f"finetune.venomous_cost_ratio={values}"], project
    )
    assert queued.stdout.count("Queued experiment") == len(GRID), queued.stdout
    run(["dvc", "queue", "start", "-j", "2"], project)
    status = _wait_for_queue(project, timeout_s=900)
    assert status.count("Success") == len(GRID), status
    shown = _experiments(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
    assert sorted(p["finetune"]["venomous_cost_ratio"] for p in shown.values()) == GRID, (
        shown.keys()
    )
