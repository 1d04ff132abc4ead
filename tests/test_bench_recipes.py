"""Smoke test of the recipe comparison: `bench/recipes.py --fast` imports a tiny synthetic folder
through the folder source and verify, splits it per seed, trains a few recipes on cached
features and writes the JSON and markdown. Shapes only, no quality thresholds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_fast_recipe_comparison_writes_table(tmp_path: Path) -> None:
    out = tmp_path / "recipes.json"
    p = subprocess.run(
        [sys.executable, "bench/recipes.py", "--fast", "--seeds", "2", "--threads", "2",
         "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    result = json.loads(out.read_text())
    assert result["meta"]["seeds"] == [0, 1]
    assert result["meta"]["parity"]["argmax_agreement"] == 1.0
    assert {"baseline", "tta", "unfreeze2"} <= set(result["recipes"])
    for name, rec in result["recipes"].items():
        assert set(rec["runs"]) == {"0", "1"}, name
        for run in rec["runs"].values():
            for key in ("val_macro_f1", "test_macro_f1", "test_accuracy",
                        "test_balanced_accuracy", "test_venomous_to_harmless_rate",
                        "test_rule_venomous_missed_rate", "test_rule_harmless_flagged_rate",
                        "test_ece_before", "test_ece_after", "temperature"):  # fmt: skip
                assert run[key] is None or 0.0 <= run[key] <= 100.0, (name, key)
    rows = {r["recipe"]: r for r in result["summary"]}
    assert set(rows) == set(result["recipes"])
    assert "delta_val_macro_f1" in rows["tta"]
    assert set(rows["baseline"]["test_macro_f1"]) == {"mean", "std"}

    md = out.with_suffix(".md").read_text()
    assert "| recipe | seeds | val macro-F1 (select)" in md
    assert md.count("\n| baseline |") == 1
    # nothing of the photos themselves leaves the work dir
    assert not any(k in json.dumps(result) for k in ("photo_id", "folder-"))
