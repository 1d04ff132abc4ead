"""The package's layers hold: import-linter's contracts (pyproject.toml) pass, fail on a planted
upward import or a torch import in deploy, the import graph stays at most six floors high, and
modules and functions stay short."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_FLOORS = 6


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the project at `root` (its pyproject.toml, its src/snakeid)."""
    env = os.environ | {"PYTHONPATH": str(root / "src")}  # ahead of the editable install
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "snakeid"
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root)
    return root


def test_the_import_contracts_hold() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        # a data module reaching up into the CLI
        (
            "data/manifest.py",
            "from snakeid.deploy import cli",
            "snakeid.data.manifest -> snakeid.deploy.cli",
        ),
        # the model layer reaching up into training
        (
            "model/models.py",
            "from snakeid.train import loop",
            "snakeid.model.models -> snakeid.train",
        ),
        # deploy and train are siblings: neither imports the other
        (
            "deploy/card.py",
            "from snakeid.train import live",
            "snakeid.deploy.card -> snakeid.train",
        ),
        # the serving install has no torch, even through a helper
        (
            "deploy/predict.py",
            "from snakeid.model import runtime",
            "snakeid.model.runtime -> torch",
        ),
    ],
)
def test_a_planted_import_breaks_a_contract(tmp_path, module, planted, broken) -> None:
    root = _copy(tmp_path)
    assert _lint_imports(root).returncode == 0  # the copy is clean before the plant
    with open(root / "src/snakeid" / module, "a") as f:
        f.write(f"\n{planted}  # noqa\n")
    result = _lint_imports(root)
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout


def test_the_import_graph_has_at_most_six_floors() -> None:
    """Each module sits one floor above the highest module it imports (function-level imports
    included); a cycle would have no floor at all."""
    graph = grimp.build_graph("snakeid")
    floors: dict[str, int] = {}
    climbing: list[str] = []

    def floor(module: str) -> int:
        if module not in floors:
            assert module not in climbing, f"import cycle: {climbing[climbing.index(module) :]}"
            climbing.append(module)
            below = graph.find_modules_directly_imported_by(module)
            floors[module] = 1 + max((floor(m) for m in below), default=0)
            climbing.pop()
        return floors[module]

    top = max(floor(m) for m in graph.modules)
    assert top <= MAX_FLOORS, sorted(m for m, f in floors.items() if f > MAX_FLOORS)


MAX_MODULE_LINES = 400  # the demo source's generated scenes are exempt
MAX_FUNCTION_LINES = 60


def test_modules_and_functions_stay_readable() -> None:
    """No module over 400 lines (except the demo source) and no function over 60, nested
    functions included: split by meaning before either grows past that."""
    too_long = []
    for path in sorted((REPO / "src/snakeid").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES and not rel.endswith("sources/demo.py"):
            too_long.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}: {node.name}() {lines} lines")
    assert not too_long, too_long
