"""iNaturalist taxon resolution: species-file names (or ids) -> active species-rank taxa.

A name must match exactly one taxon: the active one of that name, else an active taxon that
lists it as another name (`matched_term`), else an inactive one, replaced by its single current
synonym with a warning. Everything that fails is reported in one error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from snakeid.data.sources.inat_client import InatSession
from snakeid.errors import UserError
from snakeid.taxa import Species, normalise_name

_logger = logging.getLogger(__name__)


class TaxonResolutionError(UserError):
    """Species names that match no iNaturalist taxon, or more than one."""


@dataclass(frozen=True)
class ResolvedTaxon:
    name: str  # as in the species file (the manifest's `taxon`)
    taxon_id: int
    inat_name: str
    matched_by: str  # inat_id | name | other_name | synonym
    note: str = ""


class _Unresolved(Exception):
    pass


def resolve_taxa(http: InatSession, species: list[Species]) -> list[ResolvedTaxon]:
    """Map each species to an active species-rank taxon; one error lists every failure."""
    given = [s.inat_id for s in species if s.inat_id is not None]
    by_id = _taxa_by_id(http, given)
    resolved, problems = [], []
    for s in species:
        try:
            taxon = _resolve_one(http, s, by_id)
        except _Unresolved as e:
            problems.append(f"{s.name} ({e})")
            continue
        if taxon.note:
            _logger.warning("%s: %s", s.name, taxon.note)
        resolved.append(taxon)
    seen: dict[int, str] = {}
    for t in resolved:
        if t.taxon_id in seen:
            problems.append(f"{t.name} (same iNaturalist taxon {t.taxon_id} as {seen[t.taxon_id]})")
        seen.setdefault(t.taxon_id, t.name)
    if problems:
        raise TaxonResolutionError(
            f"{len(problems)} species could not be matched to one iNaturalist taxon: "
            + "; ".join(problems)
            + ". Correct the name in the species file or give its inat_id"
        )
    return resolved


def _taxa_by_id(http: InatSession, ids: list[int]) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    for i in range(0, len(ids), 30):  # /taxa/{ids} answers at most 30 per call
        chunk = ids[i : i + 30]
        data = http.get_json(f"taxa/{','.join(map(str, chunk))}", missing_ok=True)
        for t in data.get("results") or []:
            found[int(t["id"])] = t
    return found


def _resolve_one(http: InatSession, s: Species, by_id: dict[int, dict[str, Any]]) -> ResolvedTaxon:
    notes = []
    if s.inat_id is not None:
        taxon = by_id.get(s.inat_id)
        if taxon is None:
            raise _Unresolved(f"inat_id {s.inat_id} not found")
        matched_by = "inat_id"
    else:
        taxon, matched_by = _search_name(http, s.name)
        if matched_by == "other_name":
            notes.append(f"iNaturalist lists this name under {taxon['name']} ({taxon['id']})")
    if not taxon.get("is_active", True):
        synonyms = taxon.get("current_synonymous_taxon_ids") or []
        if len(synonyms) != 1:
            what = "no current synonym" if not synonyms else f"{len(synonyms)} synonyms {synonyms}"
            raise _Unresolved(f"taxon {taxon['id']} is inactive with {what}; choose an inat_id")
        old = taxon
        taxon = _taxa_by_id(http, synonyms).get(synonyms[0])
        if taxon is None or not taxon.get("is_active", True):
            raise _Unresolved(f"taxon {old['id']} is inactive and its synonym is not usable")
        matched_by = "synonym"
        notes.append(
            f"iNaturalist taxon {old['id']} ({old['name']}) is inactive; using its current "
            f"synonym {taxon['id']} ({taxon['name']}). Consider renaming it in the species file"
        )
    if taxon.get("rank") != "species":
        raise _Unresolved(f"taxon {taxon['id']} {taxon['name']} has rank {taxon.get('rank')}")
    if matched_by == "inat_id" and normalise_name(taxon["name"]) != normalise_name(s.name):
        notes.append(f"inat_id {taxon['id']} is named {taxon['name']} on iNaturalist")
    return ResolvedTaxon(s.name, int(taxon["id"]), taxon["name"], matched_by, "; ".join(notes))


def _search_name(http: InatSession, name: str) -> tuple[dict[str, Any], str]:
    key = normalise_name(name)

    def search(**extra: str) -> list[dict[str, Any]]:
        params = {"q": name, "rank": "species", "per_page": 30, **extra}
        return [t for t in http.get_json("taxa", params).get("results") or [] if t.get("id")]

    results = search()
    exact = [t for t in results if normalise_name(t.get("name", "")) == key]
    active = [t for t in exact if t.get("is_active", True)]
    if not active and not exact:
        # The name may be an older or alternative name of an active taxon...
        other = [
            t
            for t in results
            if t.get("is_active", True) and normalise_name(t.get("matched_term") or "") == key
        ]
        if len(other) == 1:
            return other[0], "other_name"
        if len(other) > 1:
            raise _Unresolved(f"ambiguous: {_describe(other)}")
        # ...or the name of an inactive taxon (the search returns active ones by default).
        exact = [t for t in search(is_active="false") if normalise_name(t.get("name", "")) == key]
        active = [t for t in exact if t.get("is_active", True)]
    if len(active) == 1:
        return active[0], "name"
    candidates = active or exact
    if not candidates:
        raise _Unresolved("not found")
    if len(candidates) > 1:
        raise _Unresolved(f"ambiguous: {_describe(candidates)}")
    return candidates[0], "name"


def _describe(taxa: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{t['id']} {t.get('name')} [{t.get('iconic_taxon_name') or t.get('rank')}]" for t in taxa
    )
