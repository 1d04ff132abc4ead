"""The species list: one committed YAML file, the single source of class names and venom status."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class Species:
    name: str  # current scientific name, e.g. "Naja kaouthia"
    common: str
    venomous: bool  # medically important venom
    inat_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SpeciesFileError(ValueError):
    pass


def normalise_name(name: str) -> str:
    """Key used to match folder names and labels: `naja_KAOUTHIA ` -> `naja kaouthia`."""
    return re.sub(r"[\s_]+", " ", name.strip()).lower()


def species_slug(name: str) -> str:
    """Folder name of a species: `Naja kaouthia` -> `naja_kaouthia`."""
    return normalise_name(name).replace(" ", "_")


def load_species(path: str | Path) -> list[Species]:
    """Read and validate the species file; order is the model's class order."""
    return read_species_file(path)[0]


def read_species_file(path: str | Path) -> tuple[list[Species], str | None]:
    """The species file: a list of species, or a mapping with that list under `species` and
    the region they live in under `region` (e.g. "the Philippines"; None when not stated)."""
    with open(path) as f:
        raw = yaml.safe_load(f)
    region = None
    if isinstance(raw, dict):
        if unknown := sorted(set(raw) - {"region", "species"}):
            raise SpeciesFileError(
                f"{path}: unknown top-level key {unknown[0]!r} (expected 'region' and 'species')"
            )
        region = raw.get("region")
        if region is not None and (not isinstance(region, str) or not region.strip()):
            raise SpeciesFileError(f"{path}: 'region' must be a non-empty string, got {region!r}")
        region = region.strip() if region else None
        raw = raw.get("species")
    return _species_list(path, raw), region


def _species_list(path: str | Path, raw: Any) -> list[Species]:
    if not isinstance(raw, list) or not raw:
        raise SpeciesFileError(f"{path}: expected a non-empty list of species")
    species, seen = [], set()
    for i, item in enumerate(raw):
        where = f"{path}: entry {i + 1}"
        if not isinstance(item, dict):
            raise SpeciesFileError(f"{where}: expected a mapping with name, common, venomous")
        unknown = set(item) - {"name", "common", "venomous", "inat_id"}
        if unknown:
            raise SpeciesFileError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        name, common, venomous = item.get("name"), item.get("common"), item.get("venomous")
        if not isinstance(name, str) or len(name.split()) < 2:
            raise SpeciesFileError(
                f"{where}: 'name' must be a binomial scientific name, got {name!r}"
            )
        if not isinstance(common, str) or not common.strip():
            raise SpeciesFileError(f"{where} ({name}): 'common' must be a non-empty string")
        if not isinstance(venomous, bool):
            raise SpeciesFileError(f"{where} ({name}): 'venomous' must be true or false")
        inat_id = item.get("inat_id")
        if inat_id is not None and (isinstance(inat_id, bool) or not isinstance(inat_id, int)):
            raise SpeciesFileError(f"{where} ({name}): 'inat_id' must be an integer")
        key = normalise_name(name)
        if key in seen:
            raise SpeciesFileError(f"{where}: {name!r} is listed twice")
        seen.add(key)
        species.append(Species(" ".join(name.split()), common.strip(), venomous, inat_id))
    return species


def index_by_name(species: list[Species]) -> dict[str, Species]:
    return {normalise_name(s.name): s for s in species}


def label_index(species: Sequence[Species]) -> dict[str, int]:
    """Scientific name → the model's output index (the species file's order)."""
    return {s.name: i for i, s in enumerate(species)}
