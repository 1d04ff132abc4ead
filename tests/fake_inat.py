"""A fake iNaturalist: API v1 (taxa, observations) and photo host on 127.0.0.1, with faults.

The JSON is modelled on recorded answers of the real API (`../shared/inat-samples/`): `results`
with `total_results`, per-photo `license_code` and `attribution`, `observation_photos` with
`position`, `taxon.ancestor_ids`, `is_active` and `current_synonymous_taxon_ids` on taxa, photo
URLs ending in `square.<ext>`. It knows its own truth, so a test can compare a manifest with what
a correct downloader must produce (`FakeInat.truth`).

Faults: scripted (`fail_next`: 429 with or without Retry-After, 500/502/503, a connection reset
mid-body, a body shorter than its Content-Length or with no Content-Length at all, a stall),
random with a seed (`fault_rate`), a photo that is gone for good (404), and `hang_on`, which
stops a response halfway until released, so a test can kill a client at a known point.

By hand, to point a real `dvc repro` at it (`download.inat.api_url: http://127.0.0.1:8765/v1`):

    python tests/fake_inat.py --port 8765 --seed 1 --faults random --species-file data/taxa.yaml
    python tests/fake_inat.py --seed 1 --species-file data/taxa.yaml --check data/raw/manifest.csv
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import random
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageDraw

# Serpentes and above, as in the real tree (Animalia, Chordata, Vertebrata, Reptilia, Squamata).
ROOT_ANCESTORS: tuple[int, ...] = (48460, 1, 2, 355675, 26036, 26172, 85553)
LICENSES: tuple[str | None, ...] = (
    "cc0",
    "cc-by",
    "cc-by-nc",
    "cc-by-sa",
    "cc-by-nd",
    "cc-by-nc-sa",
    "cc-by-nc-nd",
    None,  # all rights reserved
)
DEFAULT_LICENSES: tuple[str, ...] = ("cc0", "cc-by", "cc-by-nc")
SIZES: dict[str, int] = {"square": 75, "small": 240, "medium": 500, "large": 1024, "original": 2048}
FAULT_KINDS: tuple[str, ...] = (
    "429",
    "429_retry_after",
    "500",
    "502",
    "503",
    "reset",
    "truncate",
    "truncate_nolength",
    "stall",
)
RANDOM_FAULT_KINDS: tuple[str, ...] = tuple(k for k in FAULT_KINDS if k != "stall")


# ---------------------------------------------------------------------------------------------
# The world the fake serves


@dataclass
class Taxon:
    id: int
    name: str
    rank: str = "species"
    ancestor_ids: tuple[int, ...] = ()  # ends with the taxon's own id, as in the real API
    is_active: bool = True
    synonyms: tuple[int, ...] = ()  # current_synonymous_taxon_ids of an inactive taxon
    other_names: tuple[str, ...] = ()  # found by search, reported as `matched_term`
    iconic: str = "Reptilia"


@dataclass
class Photo:
    id: int
    license: str | None
    ext: str = "jpg"


@dataclass
class Observation:
    id: int
    taxon_id: int
    photos: list[Photo]
    user: str = "herper"
    observed_on: str = "2021-05-04"
    lat: float = 13.75
    lon: float = 100.5
    place_ids: tuple[int, ...] = (6967, 97394)
    quality_grade: str = "research"
    captive: bool = False


@dataclass
class World:
    taxa: dict[int, Taxon] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)
    _next_obs: int = 1000
    _next_photo: int = 50000

    def species(self, name: str, taxon_id: int, *, genus_id: int | None = None, **kw: Any) -> Taxon:
        genus = genus_id if genus_id is not None else taxon_id + 900000
        t = Taxon(taxon_id, name, ancestor_ids=(*ROOT_ANCESTORS, genus, taxon_id), **kw)
        self.taxa[taxon_id] = t
        return t

    def subspecies(self, parent_id: int, epithet: str, taxon_id: int) -> Taxon:
        parent = self.taxa[parent_id]
        t = Taxon(
            taxon_id,
            f"{parent.name} {epithet}",
            rank="subspecies",
            ancestor_ids=(*parent.ancestor_ids, taxon_id),
        )
        self.taxa[taxon_id] = t
        return t

    def photo(self, license: str | None, ext: str = "jpg") -> Photo:
        self._next_photo += 3
        return Photo(self._next_photo, license, ext)

    def observe(
        self, taxon_id: int, licenses: Sequence[str | None | Photo], *, gap: int = 7, **kw: Any
    ) -> Observation:
        """Add an observation with one photo per licence (or the given Photo objects)."""
        self._next_obs += gap
        photos = [p if isinstance(p, Photo) else self.photo(p) for p in licenses]
        o = Observation(self._next_obs, taxon_id, photos, **kw)
        self.observations.append(o)
        return o

    @classmethod
    def random(
        cls,
        names: Sequence[str],
        *,
        seed: int,
        obs_per_species: tuple[int, int] = (20, 40),
        inactive: Sequence[str] = (),
    ) -> World:
        """A believable world for `names`: interleaved ids, mixed licences, subspecies,
        captive and needs-id observations, now and then a photo shared by two observations.
        Names in `inactive` are inactive taxa whose current synonym holds the photos."""
        rng = random.Random(seed)
        w = cls()
        targets: list[int] = []
        for i, name in enumerate(names):
            tid = 40000 + 10 * i
            if name in inactive:
                w.species(f"{name}us", tid + 5)
                w.species(name, tid, is_active=False, synonyms=(tid + 5,))
                tid += 5
            else:
                w.species(name, tid)
            w.subspecies(tid, "minor", tid + 1)
            targets += [tid] * rng.randint(*obs_per_species)
        rng.shuffle(targets)  # so species' observation ids interleave, as on the real site
        weights = (3, 4, 5, 2, 1, 1, 1, 4)
        shared: list[Photo] = []
        for tid in targets:
            photos: list[Photo] = []
            for _ in range(rng.choice((1, 1, 2, 2, 3, 4, 5))):
                lic = rng.choices(LICENSES, weights)[0]
                ext = rng.choices(("jpg", "jpeg", "png"), (20, 2, 1))[0]
                photos.append(w.photo(lic, ext))
            if shared and rng.random() < 0.05 and shared[-1] not in photos:
                photos.append(shared[-1])  # the same photo in two observations
            shared.append(photos[0])
            day = rng.randint(1, 28)
            w.observe(
                tid + (1 if rng.random() < 0.15 else 0),
                photos,
                gap=rng.randint(1, 40),
                user=f"user{rng.randint(1, 25)}",
                observed_on=f"{rng.randint(2010, 2024)}-{rng.randint(1, 12):02d}-{day:02d}",
                lat=round(rng.uniform(-10, 30), 6),
                lon=round(rng.uniform(70, 130), 6),
                place_ids=tuple(sorted(rng.sample(range(1, 200), rng.randint(0, 3)))),
                quality_grade="needs_id" if rng.random() < 0.1 else "research",
                captive=rng.random() < 0.05,
            )
        return w


def attribution(user: str, license: str | None) -> str:
    """iNaturalist's attribution string for a photo."""
    if license is None:
        return f"(c) {user}, all rights reserved"
    if license == "cc0":
        return f"(c) {user}, no rights reserved (CC0)"
    return f"(c) {user}, some rights reserved ({license.upper().replace('CC-', 'CC ')})"


@functools.lru_cache(maxsize=4096)
def image_bytes(photo_id: int, size: str, ext: str) -> bytes:
    """A small deterministic picture of `photo_id` at `size` (4:3, longest side per size)."""
    side = SIZES[size]
    w, h = (side, side) if size == "square" else (side, max(1, side * 3 // 4))
    rng = random.Random(photo_id)
    img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        box = (x0, y0, x0 + rng.randrange(1, w), y0 + rng.randrange(1, h))
        draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG" if ext == "png" else "JPEG", quality=85)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# The server


@dataclass
class Hang:
    """A response stopped halfway: `reached` is set when it stops, `release` lets it end."""

    target: str
    nth: int
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class FakeInat:
    """The fake API and photo host; use as a context manager or call `start()` / `stop()`."""

    def __init__(
        self,
        world: World,
        *,
        port: int = 0,
        max_per_page: int = 200,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] = RANDOM_FAULT_KINDS,
        seed: int = 0,
        gone_photos: Iterable[int] = (),
        stall_s: float = 2.0,
    ):
        self.world = world
        self.max_per_page = max_per_page
        self.fault_rate = fault_rate
        self.fault_kinds = tuple(fault_kinds)
        self.gone_photos = set(gone_photos)
        self.stall_s = stall_s
        self.log: list[dict[str, Any]] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._scripted: deque[tuple[str, str]] = deque()
        self._burst = 0
        self._hangs: list[Hang] = []
        self._counts: Counter[str] = Counter()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.fake = self
        self._thread: threading.Thread | None = None

    # -- lifecycle and addresses ------------------------------------------------------------

    @property
    def root(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return f"{self.root}/v1"

    def start(self) -> FakeInat:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        for h in self._hangs:
            h.release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeInat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault knobs -------------------------------------------------------------------------

    def fail_next(self, kind: str, n: int = 1, target: str = "any") -> None:
        """The next `n` requests to `target` (any, api, image, taxa, observations) fail so."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        with self._lock:
            self._scripted.extend([(target, kind)] * n)

    def hang_on(self, target: str, nth: int = 1) -> Hang:
        """The `nth` request to `target` from now sends half its body and waits for release."""
        with self._lock:
            hang = Hang(target, self._counts[target] + nth)
            self._hangs.append(hang)
        return hang

    def requests_to(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.log if r["kind"] == kind]

    # -- truth -------------------------------------------------------------------------------

    def resolve(self, name: str) -> Taxon | None:
        """The active species-rank taxon a correct client maps `name` to."""
        key = " ".join(name.lower().split())
        taxa = [t for t in self.world.taxa.values() if t.rank == "species"]
        for t in taxa:
            if t.is_active and t.name.lower() == key:
                return t
        for t in taxa:
            if t.is_active and key in (n.lower() for n in t.other_names):
                return t
        for t in taxa:
            if not t.is_active and t.name.lower() == key and len(t.synonyms) == 1:
                return self.world.taxa[t.synonyms[0]]
        return None

    def truth(
        self,
        names: Sequence[str],
        *,
        licenses: Sequence[str] = DEFAULT_LICENSES,
        photo_size: str = "medium",
        max_photos_per_observation: int | None = 3,
        max_photos_per_species: int | None = 500,
        captive: bool = False,
        place_id: int | None = None,
        d1: str | None = None,
        d2: str | None = None,
    ) -> list[dict[str, str]]:
        """The manifest rows (these columns, as strings) a correct client must end with."""
        rows: list[dict[str, str]] = []
        seen: set[int] = set()
        for name in names:
            taxon = self.resolve(name)
            assert taxon is not None, f"{name} is not in the fake world"
            n_species = 0
            for o in sorted(self.world.observations, key=lambda o: o.id):
                t = self.world.taxa[o.taxon_id]
                if taxon.id not in t.ancestor_ids or o.quality_grade != "research":
                    continue
                if o.captive != captive or (place_id is not None and place_id not in o.place_ids):
                    continue
                if (d1 and o.observed_on < d1) or (d2 and o.observed_on > d2):
                    continue
                n_obs = 0
                for p in o.photos:
                    if (
                        max_photos_per_observation is not None
                        and n_obs >= max_photos_per_observation
                    ):
                        break
                    if p.license not in licenses or p.id in seen or p.id in self.gone_photos:
                        continue
                    seen.add(p.id)
                    n_obs += 1
                    n_species += 1
                    rows.append(
                        {
                            "photo_id": str(p.id),
                            "observation_id": str(o.id),
                            "taxon": name,
                            "license": str(p.license),
                            "attribution": attribution(o.user, p.license),
                            "url": self._photo_url(p, photo_size),
                            "user_login": o.user,
                            "observed_on": o.observed_on,
                            "latitude": str(float(o.lat)),
                            "longitude": str(float(o.lon)),
                            "place_ids": ";".join(map(str, o.place_ids)),
                        }
                    )
                    if max_photos_per_species is not None and n_species >= max_photos_per_species:
                        break
                if max_photos_per_species is not None and n_species >= max_photos_per_species:
                    break
        return rows

    # -- JSON shapes -------------------------------------------------------------------------

    def _photo_url(self, p: Photo, size: str = "square") -> str:
        return f"{self.root}/attachments/photos/{p.id}/{size}.{p.ext}?{1600000000 + p.id}"

    def _taxon_json(self, t: Taxon, matched_term: str | None = None) -> dict[str, Any]:
        out = {
            "id": t.id,
            "name": t.name,
            "rank": t.rank,
            "rank_level": {"species": 10, "subspecies": 5}.get(t.rank, 20),
            "is_active": t.is_active,
            "current_synonymous_taxon_ids": list(t.synonyms) or None,
            "ancestor_ids": list(t.ancestor_ids),
            "ancestry": "/".join(map(str, t.ancestor_ids[:-1])),
            "parent_id": t.ancestor_ids[-2] if len(t.ancestor_ids) > 1 else None,
            "iconic_taxon_name": t.iconic,
            "observations_count": sum(1 for o in self.world.observations if o.taxon_id == t.id),
            "extinct": False,
        }
        if matched_term is not None:
            out["matched_term"] = matched_term
        return out

    def _photo_json(self, p: Photo, user: str) -> dict[str, Any]:
        return {
            "id": p.id,
            "license_code": p.license,
            "url": self._photo_url(p),
            "attribution": attribution(user, p.license),
            "original_dimensions": {"width": 2048, "height": 1536},
            "flags": [],
        }

    def _observation_json(self, o: Observation) -> dict[str, Any]:
        photos = [self._photo_json(p, o.user) for p in o.photos]
        y, m, d = (int(x) for x in o.observed_on.split("-"))
        return {
            "id": o.id,
            "uuid": f"00000000-0000-4000-8000-{o.id:012d}",
            "quality_grade": o.quality_grade,
            "captive": o.captive,
            "observed_on": o.observed_on,
            "observed_on_details": {"date": o.observed_on, "year": y, "month": m, "day": d},
            "taxon": self._taxon_json(self.world.taxa[o.taxon_id]),
            "user": {"id": sum(map(ord, o.user)), "login": o.user},
            "geojson": {"type": "Point", "coordinates": [o.lon, o.lat]},
            "location": f"{o.lat},{o.lon}",
            "obscured": False,
            "geoprivacy": None,
            "place_ids": list(o.place_ids),
            "license_code": "cc-by-nc",
            "uri": f"https://www.inaturalist.org/observations/{o.id}",
            "photos": photos,
            "observation_photos": [
                {"id": 7000000 + p["id"], "position": i, "photo": p} for i, p in enumerate(photos)
            ],
        }

    # -- endpoints ---------------------------------------------------------------------------

    def _taxa_search(self, q: dict[str, str]) -> tuple[int, Any]:
        term = q.get("q", "").lower()
        ranks = set(filter(None, q.get("rank", "").split(",")))
        active = q.get("is_active", "true")
        per_page = min(int(q.get("per_page", 30)), 30)
        hits = []
        for t in sorted(self.world.taxa.values(), key=lambda t: t.id):
            if ranks and t.rank not in ranks:
                continue
            if active != "any" and t.is_active != (active == "true"):
                continue
            names = [t.name, *t.other_names]
            matched = next((n for n in names if n.lower().startswith(term)), None)
            if matched is not None:
                hits.append(self._taxon_json(t, matched))
        return 200, {
            "total_results": len(hits),
            "page": 1,
            "per_page": 30,
            "results": hits[:per_page],
        }

    def _taxa_by_id(self, ids: str) -> tuple[int, Any]:
        try:
            wanted = [int(i) for i in ids.split(",")]
        except ValueError:
            return 422, {"error": "invalid id", "status": 422}
        hits = [self._taxon_json(self.world.taxa[i]) for i in wanted if i in self.world.taxa]
        if not hits:
            return 404, {"error": "Not found", "status": 404}
        return 200, {"total_results": len(hits), "page": 1, "per_page": 30, "results": hits}

    def _observations(self, q: dict[str, str]) -> tuple[int, Any]:
        def flag(key: str) -> bool | None:
            return None if key not in q else q[key] == "true"

        per_page = min(int(q.get("per_page", 30)), 200, self.max_per_page)
        page = int(q.get("page", 1))
        if page * per_page > 10000:
            return 403, {"error": "You reached the maximum number of results", "status": 403}
        taxon_ids = {int(x) for x in q["taxon_id"].split(",")} if "taxon_id" in q else None
        photo_licenses = set(q["photo_license"].split(",")) if "photo_license" in q else None
        place = int(q["place_id"]) if "place_id" in q else None
        id_above, id_below = int(q.get("id_above", 0)), int(q.get("id_below", 1 << 62))
        captive, photos = flag("captive"), flag("photos")
        hits = []
        for o in self.world.observations:
            t = self.world.taxa[o.taxon_id]
            if taxon_ids is not None and not taxon_ids & set(t.ancestor_ids):
                continue
            if "quality_grade" in q and o.quality_grade not in q["quality_grade"].split(","):
                continue
            if captive is not None and o.captive != captive:
                continue
            if photos is not None and bool(o.photos) != photos:
                continue
            if photo_licenses is not None and not any(
                p.license in photo_licenses for p in o.photos
            ):
                continue
            if place is not None and place not in o.place_ids:
                continue
            if ("d1" in q and o.observed_on < q["d1"]) or ("d2" in q and o.observed_on > q["d2"]):
                continue
            if not id_above < o.id < id_below:
                continue
            hits.append(o)
        # The real default order is created_at desc; ids grow with creation time here.
        hits.sort(key=lambda o: o.id, reverse=q.get("order", "desc") == "desc")
        chunk = hits[(page - 1) * per_page : page * per_page]
        return 200, {
            "total_results": len(hits),
            "page": page,
            "per_page": per_page,
            "results": [self._observation_json(o) for o in chunk],
        }

    def _photo(self, path: str) -> tuple[int, bytes, str]:
        # /attachments/photos/<id>/<size>.<ext>
        try:
            photo_id = int(path.split("/")[3])
            size, ext = path.split("/")[4].split(".")
        except (IndexError, ValueError):
            return 404, b"not found", "text/plain"
        photo = next(
            (p for o in self.world.observations for p in o.photos if p.id == photo_id), None
        )
        if photo is None or photo_id in self.gone_photos or size not in SIZES or ext != photo.ext:
            return 404, b"not found", "text/plain"
        ctype = "image/png" if ext == "png" else "image/jpeg"
        return 200, image_bytes(photo_id, size, ext), ctype

    # -- request handling --------------------------------------------------------------------

    def _route(self, path: str) -> str:
        if path.startswith("/attachments/photos/"):
            return "image"
        if path == "/v1/taxa":
            return "taxa"
        if path.startswith("/v1/taxa/"):
            return "taxa_id"
        if path == "/v1/observations":
            return "observations"
        if path == "/_truth":
            return "truth"
        return "unknown"

    def _fault_for(self, kind: str) -> str | None:
        targets = {kind, "any", "image" if kind == "image" else "api"}
        if kind == "taxa_id":
            targets.add("taxa")
        with self._lock:
            for i, (target, fault) in enumerate(self._scripted):
                if target in targets:
                    del self._scripted[i]
                    return fault
            if kind in ("truth", "unknown") or not self.fault_rate:
                return None
            if self._burst:
                self._burst -= 1
                return "429"
            if self._rng.random() < self.fault_rate:
                fault = self._rng.choice(self.fault_kinds)
                if fault == "429":
                    self._burst = self._rng.randint(0, 3)  # throttling comes in bursts
                return fault
        return None

    def _hang_for(self, kind: str) -> Hang | None:
        with self._lock:
            for target in {kind, "any", "image" if kind == "image" else "api"}:
                self._counts[target] += 1
            for h in self._hangs:
                if not h.reached.is_set() and self._counts[h.target] == h.nth:
                    return h
        return None

    def handle(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        kind = self._route(url.path)
        fault = self._fault_for(kind)
        hang = self._hang_for(kind)
        entry = {
            "kind": kind,
            "path": url.path,
            "query": q,
            "user_agent": h.headers.get("User-Agent", ""),
            "fault": fault,
            "t": time.monotonic(),
        }
        with self._lock:
            self.log.append(entry)
        if fault == "stall":
            time.sleep(self.stall_s)
        elif fault in ("429", "429_retry_after", "500", "502", "503"):
            status = int(fault[:3])
            headers = {"Retry-After": "1"} if fault == "429_retry_after" else {}
            message = "Too Many Requests" if status == 429 else "Internal Server Error"
            body = json.dumps({"error": message, "status": status}).encode()
            _send(h, status, body, "application/json", headers=headers)
            return
        if kind == "image":
            status, body, ctype = self._photo(url.path)
        else:
            if kind == "taxa":
                status, obj = self._taxa_search(q)
            elif kind == "taxa_id":
                status, obj = self._taxa_by_id(url.path.rsplit("/", 1)[1])
            elif kind == "observations":
                status, obj = self._observations(q)
            elif kind == "truth":
                status, obj = 200, self._truth_query(q)
            else:
                status, obj = 404, {"error": "Not found", "status": 404}
            body, ctype = json.dumps(obj).encode(), "application/json; charset=utf-8"
        entry["status"] = status
        half = max(1, len(body) // 2)
        if hang is not None:
            _send(h, status, body, ctype, cut=half, hang=hang)
        elif fault == "reset":
            _send(h, status, body, ctype, cut=half, reset=True)
        elif fault == "truncate":
            _send(h, status, body, ctype, cut=half)
        elif fault == "truncate_nolength":
            _send(h, status, body, ctype, cut=half, length=False)
        else:
            _send(h, status, body, ctype)

    def _truth_query(self, q: dict[str, str]) -> list[dict[str, str]]:
        def cap(key: str, default: int | None) -> int | None:
            return default if key not in q else (None if q[key] in ("", "null") else int(q[key]))

        return self.truth(
            [n for n in q.get("names", "").split(",") if n],
            licenses=tuple(q.get("licenses", ",".join(DEFAULT_LICENSES)).split(",")),
            photo_size=q.get("photo_size", "medium"),
            max_photos_per_observation=cap("max_photos_per_observation", 3),
            max_photos_per_species=cap("max_photos_per_species", 500),
            captive=q.get("captive", "false") == "true",
        )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeInat

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients killed mid-response and our own resets are expected here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: simple and like a busy CDN
    server_version = "FakeInat/1.0"
    server: _Server
    _aborted = False

    def do_GET(self) -> None:
        self.server.fake.handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def finish(self) -> None:
        if not self._aborted:
            super().finish()


def _send(
    h: _Handler,
    status: int,
    body: bytes,
    ctype: str,
    *,
    headers: dict[str, str] | None = None,
    cut: int | None = None,
    length: bool = True,
    reset: bool = False,
    hang: Hang | None = None,
) -> None:
    """Send a response; with `cut`, only that many body bytes, then close, reset or hang."""
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    if length:
        h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    try:
        h.wfile.write(body if cut is None else body[:cut])
        h.wfile.flush()
        if hang is not None:
            hang.reached.set()
            hang.release.wait(timeout=60)
    except OSError:
        return
    if reset:  # SO_LINGER 0: close() sends RST instead of FIN
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
        h._aborted = True
    h.close_connection = True


# ---------------------------------------------------------------------------------------------
# Command line


def _species_names(path: str) -> list[str]:
    import yaml

    with open(path) as f:
        return [" ".join(item["name"].split()) for item in yaml.safe_load(f)]


def _check(fake: FakeInat, manifest: str, params: str) -> int:
    """Compare a manifest with the truth for the species and `download.inat` of `params`."""
    import yaml

    with open(params) as f:
        loaded = yaml.safe_load(f) or {}
    names = _species_names(loaded.get("base", {}).get("species_file", "data/taxa.yaml"))
    inat = (loaded.get("download") or {}).get("inat") or {}
    kw = {
        k: inat[k]
        for k in (
            "photo_size",
            "max_photos_per_observation",
            "max_photos_per_species",
            "captive",
            "place_id",
            "d1",
            "d2",
        )
        if k in inat
    }
    if "licenses" in inat:
        kw["licenses"] = tuple(inat["licenses"])
    want = fake.truth(names, **kw)
    with open(manifest, newline="") as f:
        got = list(csv.DictReader(f))

    def key(r: dict[str, str]) -> tuple[str, ...]:
        return (
            r["taxon"],
            r["observation_id"],
            r["photo_id"],
            r["license"],
            urlsplit(r["url"]).path,
        )

    want_keys, got_keys = [key(r) for r in want], [key(r) for r in got]
    ids = Counter(r["photo_id"] for r in got)
    wrong_licence = [
        r["photo_id"] for r in got if r["license"] not in kw.get("licenses", DEFAULT_LICENSES)
    ]
    lost = set(want_keys) - set(got_keys)
    extra = set(got_keys) - set(want_keys)
    dup = [i for i, n in ids.items() if n > 1]
    print(
        f"truth {len(want)} photos, manifest {len(got)}: lost {len(lost)}, "
        f"unexpected {len(extra)}, duplicated {len(dup)}, wrong licence {len(wrong_licence)}, "
        f"same order: {want_keys == got_keys}"
    )
    return 0 if want_keys == got_keys and not dup and not wrong_licence else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--seed", type=int, default=0, help="world and fault seed")
    ap.add_argument("--species-file", default="data/taxa.yaml", help="the fake world's species")
    ap.add_argument("--obs", type=int, nargs=2, default=(8, 15), metavar=("MIN", "MAX"))
    ap.add_argument("--per-page", type=int, default=200, help="server-side page size cap")
    ap.add_argument("--faults", choices=("none", "random"), default="none")
    ap.add_argument("--fault-rate", type=float, default=0.2)
    ap.add_argument("--check", metavar="MANIFEST", help="compare a manifest with the truth, exit")
    ap.add_argument(
        "--params", default="params.yaml", help="with --check: base.species_file, download.inat"
    )
    args = ap.parse_args(argv)
    names = _species_names(args.species_file)
    world = World.random(names, seed=args.seed, obs_per_species=tuple(args.obs))
    fake = FakeInat(
        world,
        port=0 if args.check else args.port,
        max_per_page=args.per_page,
        fault_rate=args.fault_rate if args.faults == "random" else 0.0,
        seed=args.seed,
    )
    if args.check:
        return _check(fake, args.check, args.params)
    with fake:
        print(f"fake iNaturalist API at {fake.api_url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
