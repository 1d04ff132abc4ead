"""The verdict a person acts on, and why: one home for every consumer.

`snakeid predict` (table, CSV, JSON), the service (API and page) and `evaluate`'s metrics all
call `causes` and `verdicts`, and `reason` words the cause. A photo is

- `harmless` only when the model is confident it shows one of its known harmless species: not
  flagged unknown, top-1 probability at or over the low-confidence threshold, and P(any venomous
  species) under the venomous threshold;
- `venomous` when a venomous species is the model's answer (top-1, not flagged unknown);
- `possibly_venomous` otherwise: a species the model does not know, a model that is not sure, or
  a venomous species too likely to rule out.

`possibly_venomous` as a flag is `verdict != "harmless"`, wherever it appears. Numpy only: the
serving side imports this without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from snakeid.model.calibration import ranked
from snakeid.taxa import Species

VENOMOUS, POSSIBLY_VENOMOUS, HARMLESS = "venomous", "possibly_venomous", "harmless"
VERDICTS = (VENOMOUS, POSSIBLY_VENOMOUS, HARMLESS)
# What a person is told first, for each verdict: predict's table and the page.
HEADLINES = {
    VENOMOUS: "Venomous — keep away",
    POSSIBLY_VENOMOUS: "Possibly venomous — treat it as venomous",
    HARMLESS: "Harmless — still, do not handle it",
}

# Why a photo got its verdict, the first that applies in this order.
UNKNOWN_SPECIES = "unknown_species"  # the unknown-species score is above its threshold
VENOMOUS_SPECIES = "venomous_species"  # the top-1 species is venomous
NOT_SURE = "not_sure"  # the top-1 probability is under the low-confidence threshold
VENOMOUS_CHANCE = "venomous_chance"  # P(any venomous species) at or over its threshold
CONFIDENT_HARMLESS = "confident_harmless"  # none of the above
CAUSES = (UNKNOWN_SPECIES, VENOMOUS_SPECIES, NOT_SURE, VENOMOUS_CHANCE, CONFIDENT_HARMLESS)
VERDICT_OF = {
    UNKNOWN_SPECIES: POSSIBLY_VENOMOUS,
    VENOMOUS_SPECIES: VENOMOUS,
    NOT_SURE: POSSIBLY_VENOMOUS,
    VENOMOUS_CHANCE: POSSIBLY_VENOMOUS,
    CONFIDENT_HARMLESS: HARMLESS,
}


def flagged_unknown(score: np.ndarray | float, threshold: float) -> np.ndarray:
    """The "not one of the species this model knows" flag: the unknown-species score above
    `threshold` (`snakeid.model.openset.fit_threshold` lets `finetune.known_pass_rate` of known
    held-out photos pass). Arrays or scalars."""
    return np.asarray(score) > threshold


def venomous_or_unknown(
    p_venomous: np.ndarray | float, threshold: float, unknown: np.ndarray | bool
) -> np.ndarray:
    """The part of the verdict the fitted thresholds set: P(any venomous species) ≥ `threshold`,
    or flagged unknown. bench/ measures these thresholds' trade-offs with it; a photo it alerts
    on is never `harmless` (the verdict adds a venomous top-1 and low confidence)."""
    return (np.asarray(p_venomous) >= threshold) | np.asarray(unknown, dtype=bool)


def causes(
    probs: np.ndarray,
    venomous: Sequence[bool],
    unknown: np.ndarray,
    *,
    venomous_threshold: float,
    low_confidence_threshold: float,
) -> np.ndarray:
    """The cause of each photo's verdict (`CAUSES`), from its class probabilities (N, C), the
    species' venom flags (C,) and its unknown flag (N,)."""
    venomous = np.asarray(venomous, dtype=bool)
    top1 = probs.argmax(1)  # the first of equal maxima, as a stable sort ranks them
    p_venomous = probs[:, venomous].sum(1)
    conditions = [
        np.asarray(unknown, dtype=bool),
        venomous[top1],
        probs[np.arange(len(probs)), top1] < low_confidence_threshold,
        p_venomous >= venomous_threshold,
    ]
    return np.select(conditions, list(CAUSES[:4]), default=CONFIDENT_HARMLESS)


def verdicts(cause: np.ndarray) -> np.ndarray:
    """The verdict (`VERDICTS`) of each cause."""
    return np.array([VERDICT_OF[str(c)] for c in cause], dtype=object)


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%" if p < 0.1 else f"{100 * p:.0f}%"


def scope(n_species: int, region: str | None) -> str:
    """What the model knows, in the words the page, predict and the model card use."""
    if region:
        return (
            f"knows {n_species} snake species of {region}; "
            "a snake from elsewhere may be one it does not know"
        )
    return (
        f"knows {n_species} snake species (the region they come from is not stated); "
        "a snake of any other species may be one it does not know"
    )


def reason(
    cause: str,
    probs: np.ndarray,
    species: Sequence[Species],
    *,
    region: str | None = None,
    low_confidence: bool = False,
) -> str:
    """The cause of one photo's verdict in plain words, from its probabilities (C,)."""
    order = ranked(probs)
    top = species[order[0]]
    p_top = float(probs[order[0]])
    if cause == UNKNOWN_SPECIES:
        known = f"the {len(species)} snake species of {region}" if region else None
        known = known or f"the {len(species)} species"
        return f"looks like none of {known} this model knows"
    if cause == VENOMOUS_SPECIES:
        unsure = ", but the model is not sure of the species" if low_confidence else ""
        return f"most likely the {top.common} ({_pct(p_top)}), a venomous species{unsure}"
    if cause == NOT_SURE:
        return f"the model is not sure: its best guess, the {top.common}, has only {_pct(p_top)}"
    if cause == VENOMOUS_CHANCE:
        first = next(i for i in order if species[i].venomous)
        p_first = float(probs[first])
        p_all = float(sum(probs[i] for i in range(len(species)) if species[i].venomous))
        total = f"; {_pct(p_all)} on venomous species in all" if p_all - p_first >= 0.005 else ""
        return f"could be the {species[first].common} ({_pct(p_first)}{total})"
    if cause == CONFIDENT_HARMLESS:
        return f"most likely the {top.common} ({_pct(p_top)}), a harmless species"
    raise ValueError(f"unknown cause {cause!r}; expected one of {CAUSES}")
