"""Provenance of an exported model and its model card (`models/MODEL_CARD.md`).

Both come from the same facts: the split manifests the model was trained, calibrated and tested
on (their photo counts and content hashes; each manifest row carries its photo's sha256) and
`evaluate`'s headline metrics. No git commit and no timestamp: the outputs stay a pure function
of the stage's inputs, and `dvc.lock` ties these hashes to commits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from snakeid.contract import ModelMeta
from snakeid.data.manifest import SPLITS, read_manifest
from snakeid.data.split import UNKNOWN
from snakeid.model.decision import scope
from snakeid.taxa import Species
from snakeid.utils import sha256_file


def data_provenance(split_dir: Path, species: Sequence[Species]) -> dict[str, Any]:
    """Where the photos came from, how many per species and split, the photos of species held
    out as unknown (`split.unknown_species`), and the manifests' hashes."""
    manifests = (*SPLITS, UNKNOWN)
    rows = {s: read_manifest(split_dir / f"{s}.csv") for s in manifests}
    sources = sorted({r["source"] for part in rows.values() for r in part})
    counts = {s: Counter(r["taxon"] for r in part) for s, part in rows.items()}
    return {
        "source": "+".join(sources),  # demo-synthetic | folder | inat (one per photo)
        "photos": {sp.name: {s: counts[s][sp.name] for s in SPLITS} for sp in species},
        "held_out_species": dict(sorted(counts[UNKNOWN].items())),  # photos, test only
        "manifest_sha256": {s: sha256_file(split_dir / f"{s}.csv") for s in manifests},
    }


def bench_evidence(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """The deployed unknown-species score's results in a bench/openset.py output (`result`):
    what the card reports for runs that measured nothing of their own."""
    deployed, meta = result["candidates"]["deployed"], result["meta"]
    return {
        "name": name,
        "command": meta["command"],
        "photos": meta["photos"],
        "species": meta["species"],
        "rotations": meta["partitions"] * meta["rotations_per_partition"],
        "outer_folds": meta["outer_folds_evaluated"],
        "mean": deployed["mean"],
        "sd_rotations": deployed["sd_rotations"],
    }


def model_card(meta: ModelMeta, evidence: Sequence[dict[str, Any]] = ()) -> str:
    """A short Markdown model card from the exported model's metadata, and the unknown-species
    measurements on real photos in `evidence` (`bench_evidence`)."""
    ev, held_out = meta.evaluation, meta.data["held_out_species"]
    lines = [
        f"# snakeid model card: {meta.backbone}",
        "",
        *_intended_use(meta),
        *_data(meta),
        *_test_metrics(ev),
        *_unknown_species(ev, held_out, evidence),
        *_lookalikes(ev["venomous_lookalikes"], meta.species),
        *_species_table(meta),
        *_limits(meta),
    ]
    return "\n".join(lines)


def _intended_use(meta: ModelMeta) -> list[str]:
    n, n_venomous = len(meta.species), sum(s.venomous for s in meta.species)
    lines = []
    if meta.synthetic:
        lines += [
            "> **Trained on synthetic demo photos.** This model does not identify real snakes; "
            "it exists to show the pipeline working.",
            "",
        ]
    return lines + [
        "## Intended use",
        "",
        f"Suggests which of {n} snake species ({n_venomous} venomous) a photo "
        "shows, with a verdict a person can act on (venomous, possibly venomous or harmless) "
        "and its reason, to help people who photograph snakes and the field apps and clinics "
        "that support them.",
        "",
        f"**Scope.** This model {scope(n, meta.region)}.",
        "",
        "**Not for medical decisions.** Treat every snakebite as an emergency whatever the "
        "model says. The model only knows the species below. A photo whose unknown-species "
        f"score (`{meta.unknown_score['score']}`) is above its threshold is flagged as none of "
        "them and is never called harmless; a snake of another species that is not flagged is "
        "still named as one of them.",
        "",
    ]


def _data(meta: ModelMeta) -> list[str]:
    data, totals = meta.data, _totals(meta)
    held_out = ", ".join(f"*{k}* ({v})" for k, v in data["held_out_species"].items()) or "none"
    return [
        "## Data",
        "",
        f"- Region: {meta.region or 'not stated (the species file has no `region`)'}",
        f"- Source: `{data['source']}`; photos train / val / test: "
        f"{totals['train']} / {totals['val']} / {totals['test']}, split by observation.",
        "- Manifests (sha256): "
        + ", ".join(f"{s} `{h[:16]}`" for s, h in data["manifest_sha256"].items()),
        f"- Held out of training as unknown species (photos, test only): {held_out}",
        *(
            f"- Backbone fine-tuned end to end on the training photos first (`adapt`): {b}"
            for b in (t["backbone"] for t in meta.trunks if t["adapted"])
        ),
        f"- Params digest: `{(meta.params_digest or '')[:16]}`",
        "",
    ]


def _totals(meta: ModelMeta) -> dict[str, int]:
    return {s: sum(p[s] for p in meta.data["photos"].values()) for s in SPLITS}


def _test_metrics(ev: Mapping[str, Any]) -> list[str]:
    rule, openset, verdict = ev["venomous_rule"], ev["openset"], ev["verdicts"]
    lines = ["## Test metrics", "", "| metric | value | 95 % interval |", "|---|---|---|"]
    for key, label in (
        ("macro_f1", "macro-F1"),
        ("balanced_accuracy", "balanced accuracy"),
        ("accuracy", "accuracy"),
    ):
        ci = ev[f"{key}_ci95"]
        lines.append(f"| {label} | {ev[key]:.3f} | {ci['low']:.3f}–{ci['high']:.3f} |")
    return lines + [
        f"| top-3 accuracy | {ev['top3_accuracy']:.3f} | |",
        f"| expected calibration error | {ev['ece']:.3f} | |",
        f"| venomous called a harmless species | {_rate(ev['venomous_to_harmless_rate'])} | |",
        f"| venomous told harmless (no warning of any kind) | "
        f"{_rate(verdict['venomous_no_warning_rate'])} | |",
        f"| harmless told harmless (no warning) | {_rate(verdict['harmless_no_warning_rate'])} | |",
        f"| harmless over the venomous threshold | {_rate(rule['harmless_flagged_rate'])} | |",
        f"| known-species photos flagged unknown | {_rate(openset['known_flagged_rate'])} | |",
        "",
    ]


def _species_table(meta: ModelMeta) -> list[str]:
    lines = [
        "## Species",
        "",
        "| species | common name | venomous | train | val | test |",
        "|---|---|---|---|---|---|",
    ]
    for s in meta.species:
        n = meta.data["photos"][s.name]
        lines.append(
            f"| *{s.name}* | {s.common} | {'yes' if s.venomous else 'no'} | "
            f"{n['train']} | {n['val']} | {n['test']} |"
        )
    return lines


def _limits(meta: ModelMeta) -> list[str]:
    return [
        "",
        "## Known limits",
        "",
        f"- Only these {len(meta.species)} species are named. The unknown-species flag passes "
        f"{meta.unknown_score['known_pass_rate']:.0%} of held-out known-species photos by "
        "construction, and catches only part of the others: see *Snakes it does not know*.",
        f"- Small test set ({_totals(meta)['test']} photos): read the intervals, not the point "
        "values.",
        "- Metrics are the FP32 model's; the INT8 model's agreement with it is in "
        "`metrics/quantize.json`.",
        "",
    ]


def _unknown_species(
    ev: dict[str, Any], held_out: dict[str, int], evidence: Sequence[dict[str, Any]]
) -> list[str]:
    """This run's unknown-species rows when it held species out, and always the measurements on
    real photos from bench/: never a bare "n/a"."""
    lines = ["## Snakes it does not know", ""]
    openset, verdict = ev["openset"], ev["verdicts"]
    if held_out:
        venomous_row = (
            [
                "| held-out venomous called a known harmless species, unflagged | "
                f"{_rate(openset['dangerous_rate'])} |",
                "| held-out venomous told harmless (no warning) | "
                f"{_rate(verdict['unknown_venomous_no_warning_rate'])} |",
            ]
            if openset["dangerous_rate"] is not None
            else ["| held-out venomous photos | none: every held-out species is harmless |"]
        )
        lines += [
            "This run held species out of training (`split.unknown_species`); on their test "
            "photos:",
            "",
            "| metric | value |",
            "|---|---|",
            "| held-out-species photos flagged unknown | "
            f"{_rate(openset['unknown_flagged_rate'])} |",
            f"| unknown vs known AUROC | {_num(openset['auroc'])} |",
            *venomous_row,
            "",
        ]
    else:
        lines += [
            "This run held no species out (`split.unknown_species: []`), so it has no measurement "
            "of its own of species it does not know.",
            "",
        ]
    if evidence:
        lines += [
            "Measured on real photos by `bench/openset.py` (not this model's photos): each "
            "rotation holds 3–4 species of a 14-species set out, grouped 5-fold over the rest; "
            "mean ± sd over rotations:",
            "",
            "| features | rotations × folds | unknown vs known AUROC | known photos flagged "
            "| known harmless told harmless | unknown venomous told harmless | command |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in evidence:
            m, sd = e["mean"], e["sd_rotations"]
            lines.append(
                f"| {e['name']} | {e['rotations']} × {e['outer_folds']} | {m['auroc']:.3f} ± "
                f"{sd['auroc']:.3f} | {m['known_flagged_rate']:.1%} | "
                f"{m['known_harmless_no_warning_rate']:.1%} | "
                f"{m['unknown_venomous_no_warning_rate']:.1%} | `{e['command']}` |"
            )
        lines.append("")
    return lines


def _lookalikes(pairs: list[dict[str, Any]], species: Sequence[Species]) -> list[str]:
    """The test confusions across the venomous line, the costly ones first."""
    common = {s.name: s.common for s in species}
    lines = ["## Look-alikes across the venomous line", ""]
    if not pairs:
        return [*lines, "No test photo was called a species across the venomous line.", ""]
    lines += [
        "Test photos called a species on the other side of the venomous line "
        "(`reports/evaluate.json`, `venomous_lookalikes`):",
        "",
        "| photo shows | called | photos | share of its test photos |",
        "|---|---|---|---|",
    ]
    for direction in ("venomous → harmless", "harmless → venomous"):
        for p in (p for p in pairs if p["direction"] == direction):
            shows, called = direction.split(" → ")
            lines.append(
                f"| *{p['true']}* ({common[p['true']]}, {shows}) | *{p['predicted']}* "
                f"({common[p['predicted']]}, {called}) | {p['photos']} | {p['rate']:.0%} |"
            )
    return [*lines, ""]


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
