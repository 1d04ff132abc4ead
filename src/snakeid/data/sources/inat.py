"""The iNaturalist source: research-grade, openly licensed photos of each species, resumable.

For each species of the species file, in order:

1. its name (or the `inat_id` the species file gives) becomes an active iNaturalist taxon at
   species rank (`/taxa`); an inactive taxon is replaced by its current synonym, with a warning;
2. its observations are paged with `id_above` (page numbers stop at 10,000 results), oldest id
   first, and kept in an append-only state file after every page;
3. photos are chosen by a pure function of those pages and the caps: observations in id order,
   photos in their position order, each photo's own licence in `licenses`, at most
   `max_photos_per_observation` per observation and `max_photos_per_species` per species, a photo
   id never twice. Raising a cap only fetches what is missing; lowering one drops the surplus;
4. chosen photos are downloaded to a `.part` file, checked against Content-Length, decoded, then
   renamed into place. Files already present and matching their record are skipped.

Because the choice depends only on what is on the server, a run killed at any point and rerun
ends with the same manifest as an uninterrupted one. The choice (step 3) is in `inat_selection`;
HTTP, retries and budgets in `inat_client`, its rate limit in `inat_pacing`.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image
from tqdm import tqdm

from snakeid.data.sources.common import image_dims, species_dir, species_slug
from snakeid.data.sources.inat_attribution import write_attribution
from snakeid.data.sources.inat_client import BadContent, InatSession, PhotoGone
from snakeid.data.sources.inat_config import InatConfig
from snakeid.data.sources.inat_selection import Pick, choose_photos
from snakeid.data.sources.inat_state import SpeciesState
from snakeid.data.sources.inat_taxa import ResolvedTaxon, resolve_taxa
from snakeid.taxa import Species
from snakeid.utils import sha256_file, write_json

_logger = logging.getLogger(__name__)

PER_PAGE = 200  # the API's maximum
STATE_DIR = ".inat_state"
_STATE_VERSION = 1


# ---------------------------------------------------------------------------------------------
# Entry point


def download_inat(
    cfg: InatConfig,
    species: list[Species],
    out_dir: Path,
    *,
    seed: int,
    session: InatSession | None = None,
) -> list[dict[str, Any]]:
    """Download every species' photos into `out_dir`; returns the manifest rows, in order.

    Also writes `taxa_resolved.json` and `ATTRIBUTION.csv` and keeps its resume state and
    budgets in `out_dir/.inat_state/`. `session` is for tests (a fake clock).
    """
    out_dir = Path(out_dir)
    state_dir = out_dir / STATE_DIR
    _remove_partials(out_dir / "images")
    if urlsplit(cfg.api_url).hostname == "api.inaturalist.org" and cfg.max_rps > 1:
        _logger.warning("max_rps %.3g is above the 1 request/s iNaturalist asks for", cfg.max_rps)
    own = session is None
    http = session or InatSession(cfg, state_dir / "budget.json", seed=seed)
    try:
        taxa = resolve_taxa(http, species)
        write_json(
            out_dir / "taxa_resolved.json",
            {"api_url": cfg.api_url, "species": [vars(t) for t in taxa]},
        )
        taken: set[int] = set()  # photo ids chosen for earlier species
        rows: list[dict[str, Any]] = []
        for sp, taxon in zip(species, taxa, strict=True):
            species_rows = _download_species(http, cfg, sp, taxon, out_dir, taken)
            taken.update(int(r["photo_id"]) for r in species_rows)
            rows += species_rows
    finally:
        if own:
            http.close()
    _prune_other_species(out_dir / "images", species)
    write_attribution(out_dir / "ATTRIBUTION.csv", rows, tmp_dir=out_dir / STATE_DIR)
    return rows


# ---------------------------------------------------------------------------------------------
# One species: pages -> choice -> files


def _download_species(
    http: InatSession,
    cfg: InatConfig,
    sp: Species,
    taxon: ResolvedTaxon,
    out_dir: Path,
    taken: set[int],
) -> list[dict[str, Any]]:
    """Fetch pages until the choice is complete, then the chosen photos; the species' rows."""
    state = SpeciesState(out_dir / STATE_DIR, species_slug(sp.name), _fingerprint(cfg, taxon))
    folder = species_dir(out_dir, sp.name)
    fetched, fetched_bytes = 0, 0
    bar = tqdm(desc=sp.name, unit="photo", dynamic_ncols=True, disable=None)
    try:
        while True:
            picks, capped = choose_photos(
                state.observations,
                cfg,
                folder,
                skip=taken | state.gone_ids(),
            )
            bar.set_postfix(obs=len(state.observations), MB=f"{fetched_bytes / 1e6:.1f}")
            if not capped and not state.exhausted:
                state.add_page(*_fetch_page(http, cfg, taxon.taxon_id, state.cursor))
                continue
            todo = [p for p in picks if not _is_complete(p, state.files)]
            bar.reset(total=len(picks))
            bar.update(len(picks) - len(todo))
            gone_before = len(state.gone)
            for pick in todo:
                try:
                    fetched_bytes += _fetch_photo(http, pick, state)
                    fetched += 1
                except PhotoGone as e:
                    _logger.warning("%s: photo %d skipped (%s)", sp.name, pick.photo_id, e)
                    state.add_file({"photo_id": pick.photo_id, "url": pick.url, "gone": str(e)})
                bar.update(1)
                bar.set_postfix(obs=len(state.observations), MB=f"{fetched_bytes / 1e6:.1f}")
            if len(state.gone) == gone_before:
                break  # a gone photo frees a place for another: choose again
    finally:
        bar.close()
    _prune(folder, {p.path.name for p in picks})
    if not picks:
        _logger.warning("%s: no photos with an accepted licence on iNaturalist", sp.name)
    _logger.info(
        "%s (taxon %d): %d observations seen, %d photos chosen, %d downloaded now (%.1f MB)",
        sp.name,
        taxon.taxon_id,
        len(state.observations),
        len(picks),
        fetched,
        fetched_bytes / 1e6,
    )
    return [_manifest_row(sp, p, state.files[p.photo_id]) for p in picks]


def _fingerprint(cfg: InatConfig, taxon: ResolvedTaxon) -> dict[str, Any]:
    """What the pages depend on; when it changes the pages are fetched again (caps excluded)."""
    return {
        "version": _STATE_VERSION,
        "api_url": cfg.api_url.rstrip("/"),
        "taxon_id": taxon.taxon_id,
        "licenses": sorted(cfg.licenses),
        "captive": cfg.captive,
        "place_id": cfg.place_id,
        "d1": cfg.d1,
        "d2": cfg.d2,
    }


def _fetch_page(
    http: InatSession, cfg: InatConfig, taxon_id: int, after: int
) -> tuple[list[dict[str, Any]], int, bool]:
    """One page of observations with id > `after`: (kept observations, last id, exhausted)."""
    params: dict[str, Any] = {
        "taxon_id": taxon_id,
        "quality_grade": "research",
        "photos": "true",
        "captive": str(cfg.captive).lower(),
        # Observations with at least one photo under an accepted licence; each photo is still
        # checked on its own below.
        "photo_license": ",".join(cfg.licenses),
        "per_page": PER_PAGE,
        "order_by": "id",
        "order": "asc",
        "id_above": after,
    }
    for key in ("place_id", "d1", "d2"):
        if getattr(cfg, key) is not None:
            params[key] = getattr(cfg, key)
    data = http.get_json("observations", params)
    results = [o for o in data.get("results") or [] if int(o.get("id", 0)) > after]
    last = max((int(o["id"]) for o in results), default=after)
    total = data.get("total_results")
    # A server may cap per_page lower than asked, so only an empty page or the total can say
    # that nothing is left.
    exhausted = not results or (isinstance(total, int) and total <= len(results))
    kept = [c for o in results if (c := _compact(o, taxon_id, cfg)) is not None]
    return kept, last, exhausted


def _compact(o: dict[str, Any], taxon_id: int, cfg: InatConfig) -> dict[str, Any] | None:
    """The fields the manifest needs, with the photos under an accepted licence, in order."""
    taxon = o.get("taxon") or {}
    # `taxon_id` matches descendants too: a subspecies observation counts for its species.
    if taxon.get("id") != taxon_id and taxon_id not in (taxon.get("ancestor_ids") or []):
        return None
    if o.get("quality_grade", "research") != "research" or bool(o.get("captive")) != cfg.captive:
        return None
    if o.get("observation_photos"):
        ordered = sorted(o["observation_photos"], key=lambda op: op.get("position") or 0)
        photos = [op["photo"] for op in ordered if op.get("photo")]
    else:
        photos = o.get("photos") or []
    kept = [
        {
            "id": int(p["id"]),
            "license": p["license_code"].lower(),
            "attribution": p.get("attribution") or "",
            "url": p["url"],
        }
        for p in photos
        if p.get("id") and p.get("url") and (p.get("license_code") or "").lower() in cfg.licenses
    ]
    if not kept:
        return None
    lat, lon = _public_coordinates(o)
    return {
        "id": int(o["id"]),
        "taxon_id": taxon.get("id"),
        "user_login": (o.get("user") or {}).get("login") or "",
        "observed_on": o.get("observed_on") or "",
        "latitude": lat,
        "longitude": lon,
        "place_ids": [int(p) for p in o.get("place_ids") or []],
        "photos": kept,
    }


def _public_coordinates(o: dict[str, Any]) -> tuple[float | None, float | None]:
    """The coordinates anyone can see (obscured ones for obscured observations)."""
    coords = (o.get("geojson") or {}).get("coordinates")
    if isinstance(coords, list) and len(coords) == 2:
        return float(coords[1]), float(coords[0])  # GeoJSON is (lon, lat)
    if isinstance(o.get("location"), str) and "," in o["location"]:
        lat, lon = o["location"].split(",", 1)
        return float(lat), float(lon)
    return None, None


def _is_complete(pick: Pick, files: dict[int, dict[str, Any]]) -> bool:
    """Present, from the same URL, and byte for byte what was recorded when it was fetched."""
    rec = files.get(pick.photo_id)
    if rec is None or "gone" in rec or rec.get("url") != pick.url:
        return False
    try:
        if pick.path.stat().st_size != rec["bytes"]:
            return False
    except FileNotFoundError:
        return False
    return sha256_file(pick.path) == rec["sha256"]


def _fetch_photo(http: InatSession, pick: Pick, state: SpeciesState) -> int:
    """Download one photo: `.part` file, length and decode checks, record, then rename."""
    pick.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pick.path.with_name(pick.path.name + ".part")
    try:
        n, dims = http.download(pick.url, tmp, _decode)
        # The record goes first: a file at its final name always has one, and a record whose
        # file never arrived just means "download again".
        state.add_file(
            {
                "photo_id": pick.photo_id,
                "url": pick.url,
                "bytes": n,
                "sha256": sha256_file(tmp),
                "width": dims[0],
                "height": dims[1],
            }
        )
        os.replace(tmp, pick.path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def _decode(path: Path) -> tuple[int, int]:
    """Fully decode (a cut-short body fails here even without a Content-Length); displayed size."""
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadContent(str(e)) from None
    dims = image_dims(path)
    if dims is None:
        raise BadContent("unreadable header")
    return dims


def _remove_partials(images: Path) -> None:
    """`.part` files are downloads a killed run left half done."""
    if images.is_dir():
        for part in images.glob("*/*.part"):
            part.unlink()


def _prune(folder: Path, keep: set[str]) -> None:
    """Drop files no longer chosen (a lowered cap, a changed filter), so the folder = manifest."""
    if not folder.is_dir():
        return
    stale = [f for f in folder.iterdir() if f.is_file() and f.name not in keep]
    for f in stale:
        f.unlink()
    if stale:
        _logger.info("%s: removed %d photos no longer chosen", folder, len(stale))


def _prune_other_species(images: Path, species: list[Species]) -> None:
    if not images.is_dir():
        return
    wanted = {species_slug(s.name) for s in species}
    for folder in images.iterdir():
        if folder.is_dir() and folder.name not in wanted:
            _logger.info("removing %s: not in the species file", folder)
            shutil.rmtree(folder)


# ---------------------------------------------------------------------------------------------
# Outputs


def _manifest_row(sp: Species, pick: Pick, rec: dict[str, Any]) -> dict[str, Any]:
    obs = pick.obs
    return {
        "photo_id": str(pick.photo_id),
        "observation_id": str(obs["id"]),
        "taxon": sp.name,
        "path": pick.path.as_posix(),
        "source": "inat",
        "license": pick.photo["license"],
        "attribution": pick.photo["attribution"],
        "url": pick.url,
        "width": rec["width"],
        "height": rec["height"],
        "sha256": rec["sha256"],
        "split": "",
        "user_login": obs["user_login"],
        "observed_on": obs["observed_on"],
        "latitude": "" if obs["latitude"] is None else obs["latitude"],
        "longitude": "" if obs["longitude"] is None else obs["longitude"],
        "place_ids": ";".join(map(str, obs["place_ids"])),
    }
