"""Which photos the iNaturalist source keeps of a species (step 3 in `inat`), and their URLs.

No I/O: the choice is a pure function of the observations seen and the caps, which is what lets
a killed download resume to the same manifest. Its own module so that rule reads apart from the
paging and file handling around it in `inat`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from snakeid.data.sources.inat_config import InatConfig

_logger = logging.getLogger(__name__)

_SIZE_WORD = re.compile(r"/(square|thumb|small|medium|large|original)(\.[A-Za-z0-9]+)$")


@dataclass(frozen=True)
class Pick:
    """One chosen photo of one observation."""

    obs: dict[str, Any]
    photo: dict[str, Any]
    url: str  # resized
    path: Path

    @property
    def photo_id(self) -> int:
        return int(self.photo["id"])


def choose_photos(
    observations: list[dict[str, Any]],
    cfg: InatConfig,
    folder: Path,
    *,
    skip: set[int],
) -> tuple[list[Pick], bool]:
    """The photos to keep, in manifest order, and whether the species cap was reached.

    A pure function of the observations seen and the caps, so a resumed run chooses exactly what
    an uninterrupted one would have.
    """
    picks: list[Pick] = []
    seen = set(skip)
    done_obs: set[int] = set()
    for obs in sorted(observations, key=lambda o: o["id"]):
        if obs["id"] in done_obs:
            continue
        done_obs.add(obs["id"])
        n = 0
        for photo in obs["photos"]:
            if cfg.max_photos_per_observation is not None and n >= cfg.max_photos_per_observation:
                break
            if photo["id"] in seen:
                continue  # the same photo in two observations: download it once
            seen.add(photo["id"])
            url = resize_url(photo["url"], cfg.photo_size)
            picks.append(Pick(obs, photo, url, folder / f"{photo['id']}{_extension(url)}"))
            n += 1
            if cfg.max_photos_per_species is not None and len(picks) >= cfg.max_photos_per_species:
                return picks, True
    return picks, False


def resize_url(url: str, size: str) -> str:
    """`.../photos/1/square.jpg?123` -> `.../photos/1/medium.jpg?123` (extension kept)."""
    parts = urlsplit(url)
    path, n = _SIZE_WORD.subn(lambda m: f"/{size}{m.group(2)}", parts.path)
    if not n:
        _logger.warning("photo URL %s has no size word; downloading it as is", url)
    return urlunsplit(parts._replace(path=path))


def _extension(url: str) -> str:
    suffix = Path(urlsplit(url).path).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{2,5}", suffix) else ".jpg"
