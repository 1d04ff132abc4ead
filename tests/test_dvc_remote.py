"""Sharing data and models through a DVC remote: push, a fresh clone, pull, nothing to re-run.

The remote is a local directory; an `s3://`, `gs://`, `azure://` or `ssh://` remote behaves the
same once its extra is installed (`pip install 'dvc[s3]'`, ...).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dvc_project import commit, copy_project, ran_stages, reproduced, run

OUTPUTS = (
    "models/head.pt",
    "models/model_final.pt",
    "models/model_int8.onnx",
    "data/split/val.csv",
)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> tuple[Path, Path]:
    """A reproduced project with a local default remote, committed and pushed (run-cache too)."""
    root = tmp_path_factory.mktemp("remote")
    project = copy_project(reproduced(tmp_path_factory), root / "origin")
    remote = root / "storage"
    run(["dvc", "remote", "add", "-d", "storage", str(remote)], project)
    commit(project, "add the team's remote")
    run(["dvc", "push", "--run-cache"], project)
    return project, remote


def _clone(origin: Path, dest: Path) -> Path:
    run(["git", "clone", "-q", str(origin), str(dest)], origin.parent)
    assert not (dest / "models/model_final.pt").exists()  # git has only the pointers
    return dest


@pytest.mark.slow
def test_pull_into_a_fresh_clone_restores_everything(pushed, tmp_path):
    origin, remote = pushed
    assert any(p.is_file() for p in remote.rglob("*"))
    clone = _clone(origin, tmp_path / "clone")
    run(["dvc", "pull"], clone)
    for out in OUTPUTS:
        assert (clone / out).read_bytes() == (origin / out).read_bytes(), out
    status = run(["dvc", "status"], clone).stdout
    assert "up to date" in status, status
    again = run(["dvc", "repro"], clone).stdout
    assert ran_stages(again) == set(), again


@pytest.mark.slow
def test_repro_pull_fetches_instead_of_recomputing(pushed, tmp_path):
    origin, _ = pushed
    clone = _clone(origin, tmp_path / "clone")
    out = run(["dvc", "repro", "--pull"], clone).stdout
    assert ran_stages(out) == set(), out
    assert (clone / "models/model_int8.onnx").read_bytes() == (
        origin / "models/model_int8.onnx"
    ).read_bytes()
    assert "up to date" in run(["dvc", "status"], clone).stdout
