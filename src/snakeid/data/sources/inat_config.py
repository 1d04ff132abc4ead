"""The `download.inat` params section: which photos the iNaturalist source asks for, and how
politely. Its own module so that the HTTP client (`inat_client`) can take it without importing
the source that drives the client."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from snakeid.config import ParamsError, spec
from snakeid.data.sources.inat_attribution import LICENSE_CODES

PHOTO_SIZES: tuple[str, ...] = ("square", "small", "medium", "large", "original")
_KEY = "download.inat"
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class InatConfig:
    api_url: str = "https://api.inaturalist.org/v1"
    licenses: tuple[str, ...] = field(
        default=("cc0", "cc-by", "cc-by-nc"), metadata=spec(choices=LICENSE_CODES)
    )
    photo_size: str = field(default="medium", metadata=spec(choices=PHOTO_SIZES))
    captive: bool = False  # the API's `captive` filter: false = wild only
    place_id: int | None = field(default=None, metadata=spec(ge=1))
    d1: str | None = None  # observed on or after (YYYY-MM-DD)
    d2: str | None = None  # observed on or before
    max_photos_per_species: int | None = field(default=500, metadata=spec(ge=1))
    max_photos_per_observation: int | None = field(default=3, metadata=spec(ge=1))
    max_rps: float = field(default=1.0, metadata=spec(gt=0))
    timeout_s: float = field(default=30.0, metadata=spec(gt=0))
    max_retries: int = field(default=6, metadata=spec(ge=0, le=20))
    backoff_base_s: float = field(default=2.0, metadata=spec(ge=0))
    daily_request_budget: int = field(default=10_000, metadata=spec(ge=1))
    hourly_media_bytes_budget: int = field(default=5_000_000_000, metadata=spec(ge=1))
    contact: str | None = None  # e-mail or URL added to the User-Agent

    def __post_init__(self) -> None:
        if not re.match(r"https?://", self.api_url):
            raise ParamsError(f"{_KEY}.api_url: expected an http(s) URL, got {self.api_url!r}")
        if not self.licenses:
            raise ParamsError(f"{_KEY}.licenses: list at least one licence (e.g. cc-by)")
        for key in ("d1", "d2"):
            value = getattr(self, key)
            if value is not None and not _is_date(value):
                raise ParamsError(f"{_KEY}.{key}: {value!r} is not a date (YYYY-MM-DD)")
        if self.d1 and self.d2 and self.d1 > self.d2:
            raise ParamsError(f"{_KEY}.d1: {self.d1} is after d2 ({self.d2})")


def _is_date(value: str) -> bool:
    try:
        return bool(_ISO_DATE.fullmatch(value)) and date.fromisoformat(value) is not None
    except ValueError:
        return False
