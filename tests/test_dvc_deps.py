"""dvc.yaml is complete: every stage lists each `snakeid` module its script imports, directly or
through other modules (function-level imports included), and the params it reads."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.exists():
            return f
    return None


def _imports(path: Path) -> set[str]:
    """`snakeid...` modules imported anywhere in the file (also `from snakeid import x`)."""
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {  # `if TYPE_CHECKING:` imports never run
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(block)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("snakeid")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("snakeid"):
            found.add(node.module)
            found |= {
                f"{node.module}.{a.name}"
                for a in node.names
                if _module_file(f"{node.module}.{a.name}")
            }
    return found


def closure(script: Path) -> set[Path]:
    """Every source file of `snakeid` that running `script` can import."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for name in _imports(todo.pop()):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # a package's __init__ runs too
                f = _module_file(".".join(parts[:i]))
                if f and f not in seen:
                    seen.add(f)
                    todo.append(f)
    return seen


def _covered(f: Path, deps: list[str]) -> bool:
    rel = f.relative_to(REPO).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_imported_module_is_a_dep(stage):
    cmd = STAGES[stage]["cmd"]
    scripts = re.findall(r"stages/\w+\.py", cmd)
    deps = [str(d) for d in STAGES[stage]["deps"]]
    files = set().union(*(closure(REPO / s) for s in scripts))
    if "snakeid.train.distributed" in cmd:  # the launcher itself
        files |= {SRC / "snakeid/train/distributed.py"} | closure(
            SRC / "snakeid/train/distributed.py"
        )
    missing = sorted(f.relative_to(REPO).as_posix() for f in files if not _covered(f, deps))
    assert not missing, f"{stage}: add to dvc.yaml deps: {missing}"
    assert all(s in deps for s in scripts)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_src_dep_is_imported(stage):
    """And no more: a module the stage never imports is not its dep, so editing it (the CLI, the
    service, predict's presentation code) re-runs nothing."""
    cmd = STAGES[stage]["cmd"]
    files = set().union(*(closure(REPO / s) for s in re.findall(r"stages/\w+\.py", cmd)))
    if "snakeid.train.distributed" in cmd:
        files |= {SRC / "snakeid/train/distributed.py"} | closure(
            SRC / "snakeid/train/distributed.py"
        )
    imported = [f.relative_to(REPO).as_posix() for f in files]
    src_deps = [str(d) for d in STAGES[stage]["deps"] if str(d).startswith("src/")]
    extra = [d for d in src_deps if not any(_covered(REPO / f, [d]) for f in imported)]
    assert not extra, f"{stage}: dvc.yaml deps it never imports: {extra}"
