"""DVC deps follow the layers: editing deployment code (the service, the CLI, predict) re-runs no
stage, and editing what the exported model computes re-runs export."""

from __future__ import annotations

import json
from pathlib import Path

from dvc_project import copy_project, reproduced, run


def _changed_stages(root: Path) -> set[str]:
    out = run(["dvc", "status", "--json"], root).stdout.strip()
    return set(json.loads(out or "{}"))


def _edit(root: Path, rel: str) -> None:
    with open(root / rel, "a") as f:
        f.write("\n# an edit\n")


def test_editing_the_service_cli_and_predict_changes_no_stage(tmp_path_factory, tmp_path):
    root = copy_project(reproduced(tmp_path_factory), tmp_path / "snakeid")
    assert _changed_stages(root) == set()
    for rel in (
        "src/snakeid/deploy/serve.py",
        "src/snakeid/deploy/cli.py",
        "src/snakeid/deploy/predict.py",
        "src/snakeid/deploy/predict_output.py",  # predict's presentation: tables, CSV, JSON
    ):
        _edit(root, rel)
    assert _changed_stages(root) == set()
    # the control: the exported model's metadata and parity check are export's own code
    _edit(root, "src/snakeid/model/export.py")
    assert _changed_stages(root) == {"export_onnx"}  # and no training stage
