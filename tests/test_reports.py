"""What the stages write for review: DVCLive curves, headline metrics, provenance, model card."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from snakeid.contract import ModelMeta, PreprocessSpec
from snakeid.data.dataset import eval_preprocess_spec
from snakeid.deploy.card import bench_evidence, data_provenance, model_card
from snakeid.model.metrics import bootstrap_intervals, venomous_lookalikes
from snakeid.taxa import Species
from snakeid.train.evaluate import HEADLINE, headline, per_species_rows
from snakeid.train.live import CURVES, EpochLog
from snakeid.utils import sha256_file

SPECIES = [
    Species("Naja kaouthia", "Monocled Cobra", True),
    Species("Ptyas mucosa", "Oriental Rat Snake", False),
]


def test_epoch_log_writes_one_step_per_epoch_then_the_headline(tmp_path):
    live = tmp_path / "dvclive" / "train_head"
    log = EpochLog(live, "train_head")
    for epoch, f1 in ((1, 0.5), (2, 0.7), (3, 0.6)):
        log.epoch({"epoch": epoch, "train_loss": 1 / epoch, "val_loss": 0.9, "val_macro_f1": f1})
        summary = json.loads((live / "metrics.json").read_text())
        assert summary["step"] == epoch  # progress, per epoch
        assert summary["train_head"]["val_macro_f1"] == f1
    log.finish({"train_loss": 0.5, "val_loss": 0.9, "val_macro_f1": 0.7})
    assert json.loads((live / "metrics.json").read_text()) == {
        "train_head": {"train_loss": 0.5, "val_loss": 0.9, "val_macro_f1": 0.7},
        "step": 3,
    }
    for name in CURVES:
        with open(live / "plots" / "metrics" / "train_head" / f"{name}.tsv", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        assert [r["step"] for r in rows] == ["1", "2", "3"]
        assert set(rows[0]) == {"step", name}  # no timestamp: the files reproduce bit for bit
    assert not (live / "report.html").exists() and not (live / "dvc.yaml").exists()


def test_epoch_log_without_epochs_writes_only_the_headline(tmp_path):
    log = EpochLog(tmp_path / "live", "finetune")
    log.finish({"val_macro_f1": 0.25})
    assert json.loads((tmp_path / "live" / "metrics.json").read_text()) == {
        "finetune": {"val_macro_f1": 0.25}
    }


def test_bootstrap_intervals_cover_the_point_estimates():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.integers(0, 4, 200))
    ci = bootstrap_intervals(y, pred, [0, 1, 2, 3], resamples=300, seed=1)
    assert set(ci) == {"accuracy_ci95", "balanced_accuracy_ci95", "macro_f1_ci95"}
    point = balanced_accuracy_score(y, pred)
    assert ci["balanced_accuracy_ci95"]["low"] < point < ci["balanced_accuracy_ci95"]["high"]
    assert ci["balanced_accuracy_ci95"]["high"] - ci["balanced_accuracy_ci95"]["low"] < 0.3
    again = bootstrap_intervals(y, pred, [0, 1, 2, 3], resamples=300, seed=1)
    assert again == ci  # seeded


def _evaluation() -> dict:
    ci = {"low": 0.5, "high": 0.9}
    return {
        **dict.fromkeys(HEADLINE, 0.7),
        **{k: ci for k in HEADLINE if k.endswith("_ci95")},
        "verdicts": {
            "harmless_no_warning_rate": 0.6,
            "venomous_no_warning_rate": 0.01,
            "unknown_venomous_no_warning_rate": 0.1,
            "harmless_photos": {"venomous": 1, "possibly_venomous": 3, "harmless": 6},
        },
        "venomous_rule": {
            "threshold": 0.2,
            "venomous_missed_rate": 0.05,
            "harmless_flagged_rate": 0.3,
        },
        "openset": {
            "threshold": 1.5,
            "auroc": 0.8,
            "unknown_flagged_rate": 0.4,
            "known_flagged_rate": 0.05,
            "dangerous_rate": 0.25,
            "unknown_venomous_caught_rate": 0.9,
        },
        "n_test": 10,
        "per_species": {
            "Naja kaouthia": {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 4},
        },
    }


def test_headline_keeps_only_the_review_numbers():
    got = headline(_evaluation())
    assert set(got) == {*HEADLINE, "verdicts", "venomous_rule", "openset"}
    assert got["verdicts"] == {
        "harmless_no_warning_rate": 0.6,
        "venomous_no_warning_rate": 0.01,
        "unknown_venomous_no_warning_rate": 0.1,
    }
    assert got["venomous_rule"] == {"venomous_missed_rate": 0.05, "harmless_flagged_rate": 0.3}
    assert got["openset"] == {
        "auroc": 0.8, "unknown_flagged_rate": 0.4, "known_flagged_rate": 0.05,
        "dangerous_rate": 0.25,
    }  # fmt: skip
    assert per_species_rows(_evaluation()) == [
        {"species": "Naja kaouthia", "precision": 1.0, "recall": 0.5, "f1": 0.666667, "support": 4}
    ]


KRAIT = Species("Bungarus fasciatus", "Banded Krait", True)
WOLF = Species("Lycodon capucinus", "Common Wolf Snake", False)


def test_lookalikes_are_the_confusions_across_the_venomous_line():
    species = [*SPECIES, KRAIT, WOLF]  # cobra, rat snake, krait, wolf snake
    y_true = np.array([2, 2, 2, 2, 0, 0, 1, 1, 3, 3])
    y_pred = np.array([3, 3, 2, 0, 1, 0, 1, 0, 3, 2])
    assert venomous_lookalikes(y_true, y_pred, species) == [
        {
            "true": "Bungarus fasciatus",
            "predicted": "Lycodon capucinus",
            "direction": "venomous → harmless",
            "photos": 2,
            "rate": 0.5,
        },
        {
            "true": "Lycodon capucinus",
            "predicted": "Bungarus fasciatus",
            "direction": "harmless → venomous",
            "photos": 1,
            "rate": 0.5,
        },
        {
            "true": "Naja kaouthia",
            "predicted": "Ptyas mucosa",
            "direction": "venomous → harmless",
            "photos": 1,
            "rate": 0.5,
        },
        {
            "true": "Ptyas mucosa",
            "predicted": "Naja kaouthia",
            "direction": "harmless → venomous",
            "photos": 1,
            "rate": 0.5,
        },
    ]  # a krait called a cobra stays on one side of the line: not a look-alike
    assert venomous_lookalikes(y_true, y_true, species) == []


def _split(tmp_path: Path, source: str) -> Path:
    split = tmp_path / "split"
    split.mkdir()
    counts = {"train": (3, 2), "val": (1, 1), "test": (1, 0)}
    for part, (cobras, rats) in counts.items():
        rows = [("Naja kaouthia", i) for i in range(cobras)] + [
            ("Ptyas mucosa", i) for i in range(rats)
        ]
        with open(split / f"{part}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["photo_id", "taxon", "source"])
            w.writerows([f"{part}-{t}-{i}", t, source] for t, i in rows)
    with open(split / "unknown.csv", "w", newline="") as f:  # a species held out as unknown
        csv.writer(f).writerows(
            [["photo_id", "taxon", "source"], ["u-0", "Naja sputatrix", source]]
        )
    return split


@pytest.mark.parametrize("source", ["demo-synthetic", "inat"])
def test_provenance_and_model_card(tmp_path, source):
    split = _split(tmp_path, source)
    data = data_provenance(split, SPECIES)
    assert data["source"] == source
    assert data["photos"] == {
        "Naja kaouthia": {"train": 3, "val": 1, "test": 1},
        "Ptyas mucosa": {"train": 2, "val": 1, "test": 0},
    }
    assert data["manifest_sha256"]["val"] == sha256_file(split / "val.csv")
    assert data["held_out_species"] == {"Naja sputatrix": 1}
    assert data["manifest_sha256"]["unknown"] == sha256_file(split / "unknown.csv")
    meta = ModelMeta(
        species=tuple(SPECIES),
        preprocess=PreprocessSpec.from_dict(eval_preprocess_spec(224)),
        backbone="efficientnet_lite0",
        trunks=({"backbone": "efficientnet_lite0", "size": 224, "adapted": source == "inat"},),
        params_digest="ab" * 32,
        data=data,
        evaluation=headline(_evaluation())
        | {
            "venomous_lookalikes": venomous_lookalikes(
                np.array([0, 0, 1]), np.array([1, 0, 0]), SPECIES
            )
        },  # fmt: skip
        unknown_score={"score": "msp+knn1_per_class", "known_pass_rate": 0.95},
    )
    evidence = {
        "candidates": {"deployed": {"mean": {"auroc": 0.788, "known_flagged_rate": 0.039,
                                             "known_harmless_no_warning_rate": 0.5,
                                             "unknown_venomous_no_warning_rate": 0.02},
                                    "sd_rotations": {"auroc": 0.038}}},
        "meta": {"command": "python bench/openset.py --data D --out bench/openset.json",
                 "photos": 1175, "species": 14, "partitions": 2, "rotations_per_partition": 4,
                 "outer_folds_evaluated": 5},
    }  # fmt: skip
    card = model_card(meta, [bench_evidence("frozen", evidence)])
    lookalikes = card[card.index("## Look-alikes") : card.index("## Species")].splitlines()
    assert lookalikes[-3:-1] == [
        "| *Naja kaouthia* (Monocled Cobra, venomous) | *Ptyas mucosa* (Oriental Rat Snake, "
        "harmless) | 1 | 50% |",
        "| *Ptyas mucosa* (Oriental Rat Snake, harmless) | *Naja kaouthia* (Monocled Cobra, "
        "venomous) | 1 | 100% |",
    ]
    no_pairs = replace(meta, evaluation=meta.evaluation | {"venomous_lookalikes": []})
    assert "No test photo was called a species across the venomous line." in model_card(no_pairs)
    assert "| known-species photos flagged unknown | 5.0% | |" in card
    assert "| harmless told harmless (no warning) | 60.0% | |" in card
    assert "| unknown vs known AUROC | 0.800 |" in card
    assert "| held-out venomous told harmless (no warning) | 10.0% |" in card
    assert "*Naja sputatrix* (1)" in card
    bench_row = (
        "| frozen | 8 × 5 | 0.788 ± 0.038 | 3.9% | 50.0% | 2.0% | "
        "`python bench/openset.py --data D --out bench/openset.json` |"
    )
    assert bench_row in card
    assert "- Region: not stated" in card and "region they come from is not stated" in card
    # a run that held no species out still reports measured evidence, never a bare n/a
    openset = meta.evaluation["openset"] | {"auroc": None, "unknown_flagged_rate": None,
                                            "dangerous_rate": None}  # fmt: skip
    meta = replace(meta, data=data | {"held_out_species": {}}, region="Testland",
                   evaluation=meta.evaluation | {"openset": openset})  # fmt: skip
    alone = model_card(meta, [bench_evidence("frozen", evidence)])
    unknown_part = alone[alone.index("## Snakes it does not know") : alone.index("## Look-alikes")]
    assert "n/a" not in unknown_part and bench_row in unknown_part
    assert "held no species out" in unknown_part
    assert "This model knows 2 snake species of Testland; a snake from elsewhere" in alone
    assert "- Region: Testland" in alone
    assert "Not for medical decisions" in card
    assert "| *Naja kaouthia* | Monocled Cobra | yes | 3 | 1 | 1 |" in card
    assert "| macro-F1 | 0.700 | 0.500–0.900 |" in card
    assert ("synthetic demo photos" in card) == (source == "demo-synthetic")
    adapted = "fine-tuned end to end on the training photos first (`adapt`): efficientnet_lite0"
    assert (adapted in card) == (source == "inat")


def test_progress_logs_lines_instead_of_a_bar_when_not_on_a_terminal(caplog, capsys):
    import logging

    import snakeid.utils as utils

    with (
        caplog.at_level(logging.INFO, logger="snakeid.utils"),
        utils.Progress(3, "verify", "img", every_s=0) as p,  # a line at every update
    ):
        for _ in range(3):
            p.update()
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "verify: 1/3 img", "verify: 2/3 img", "verify: 3/3 img",
    ]  # fmt: skip
    caplog.clear()
    with (
        caplog.at_level(logging.INFO, logger="snakeid.utils"),
        utils.Progress(2, "train_head: epochs", "epoch", every_s=0) as p,
    ):
        p.update(loss="0.512", val_f1="0.731")  # named values end the line, as on the bar
    assert caplog.records[0].getMessage().endswith("epoch/s) loss 0.512 val_f1 0.731")
    assert "verify" not in capsys.readouterr().err  # no tqdm bar written
