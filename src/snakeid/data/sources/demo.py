"""The `demo` source: a deterministic set of synthetic snake photos, generated offline.

It lets the whole pipeline run anywhere, with no network and no third-party photos. Each
species gets a look: the 17 default species a hand-made one (krait bands, a cobra's hood and
monocle, a python's blotches or net, ...), any other species one derived from a hash of its
name. Similar species are drawn similar on purpose (the kraits differ in band width, spacing
and gloss; the cobras in hood mark and colour), so a classifier has to learn detail.

Each synthetic individual is one observation with 1 to `max_photos_per_observation` photos: the
same colours, pattern phase and body proportions, in a new pose on another crop of the same
ground. Around the snake varies everything a classifier should ignore: background texture and
colour, scale, position, rotation, light, blur, occluding leaves and branches, JPEG quality and
aspect ratio. Class sizes are imbalanced like a real test set. A few broken files and exact
duplicates are mixed in so that `verify` has real work on every run.

Rendering: the body is a chain of points along a smooth random path. Each segment is drawn,
tail first, into an integer image holding the segment's index; from that index every body
pixel gets its body coordinates (s: distance from the snout, v: -1..1 across the body), in
which the pattern is painted and the body shaded as a cylinder. The snake is drawn at twice the
output size and box-filtered down, which anti-aliases its outline.
"""

from __future__ import annotations

import colorsys
import contextlib
import hashlib
import io
import logging
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from snakeid.config import ParamsError, spec
from snakeid.contract import SYNTHETIC_SOURCE
from snakeid.data.sources.common import species_dir
from snakeid.taxa import Species, normalise_name
from snakeid.utils import sha256_file

_logger = logging.getLogger(__name__)

SOURCE = SYNTHETIC_SOURCE
LICENSE = "CC0-1.0 (synthetic)"
ATTRIBUTION = "snakeid synthetic demo data"


@dataclass(frozen=True)
class DemoConfig:
    # Observations of the rarest and the commonest species; the others fall in between on a
    # geometric scale. At least 3, so that train, val and test can each get one.
    observations_rare: int = field(default=5, metadata=spec(ge=3))
    observations_common: int = field(default=30, metadata=spec(ge=3))
    max_photos_per_observation: int = field(default=3, metadata=spec(ge=1, le=10))
    image_size: int = field(default=288, metadata=spec(ge=64, le=2048))  # typical shorter side
    broken_files: int = field(default=3, metadata=spec(ge=0))  # truncated, empty, not an image
    duplicates: int = field(default=4, metadata=spec(ge=0))  # byte-identical copies

    def __post_init__(self) -> None:
        if self.observations_rare > self.observations_common:
            raise ParamsError(
                f"download.demo.observations_rare: {self.observations_rare} is larger than "
                f"download.demo.observations_common ({self.observations_common})"
            )


# ---------------------------------------------------------------------------------------------
# Looks. Lengths are in body half-widths ("r"); v runs from -1 to 1 across the body.

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Band:
    colour: RGB
    period: float  # distance between bands, in r
    width: float  # band length as a fraction of the period
    chevron: float = 0.0  # > 0: band edges run back towards the tail on the flanks
    start: float = 0.0  # body fraction where the bands begin to show ...
    fade: float = 0.0  # ... and over which they fade in
    strength: float = 1.0
    edge: RGB | None = None  # a thin rim of another colour (coral-snake rings)
    edge_width: float = 0.0
    paired: bool = False  # bands come in close pairs
    rings: bool = False  # bands cross the belly too
    wobble: float = 0.06  # irregularity of the band edges


@dataclass(frozen=True)
class Blotches:
    colour: RGB
    edge: RGB
    period: float
    length: float  # half-length of a dorsal blotch along the body, in r
    width: float  # half-width of a dorsal blotch, in r
    lateral: RGB | None = None  # smaller blotches on the flanks, between the dorsal ones
    lateral_centre: RGB | None = None
    edge_width: float = 0.18


@dataclass(frozen=True)
class Net:
    colour: RGB  # the net lines
    period: float
    line: float  # line half-thickness, fraction of a cell
    saddle: RGB  # cells on the back
    spot: RGB  # pale spots in the cells on the flanks


@dataclass(frozen=True)
class Stripe:
    colour: RGB
    v: float  # centre, |v|
    width: float


@dataclass(frozen=True)
class Hood:
    width: float  # spread hood half-width, in r
    length: float
    mark: str = "none"  # none | monocle
    mark_colour: RGB = (225, 215, 180)
    spread: float = 0.7  # probability a photo shows the hood spread


@dataclass(frozen=True)
class HeadMark:
    kind: str  # chevron | collar | spear | midline | crossbars | lips | lip_bars
    colour: RGB
    start: float = 0.0  # spear: fraction of the head (from the snout) where it begins


@dataclass(frozen=True)
class Look:
    ground: RGB
    belly: RGB
    belly_from: float = 0.9  # |v| beyond which the belly's colour shows at the margins
    head: RGB | None = None
    head_mark: HeadMark | None = None
    tail: RGB | None = None
    tail_colour_part: float = 0.0
    bands: tuple[Band, ...] = ()
    blotches: Blotches | None = None
    net: Net | None = None
    stripes: tuple[Stripe, ...] = ()
    hood: Hood | None = None
    gloss: float = 0.3
    ridge: float = 0.0  # a krait's raised backbone: triangular cross-section
    length: float = 55.0
    head_length: float = 2.6
    head_width: float = 1.15
    neck: float = 0.85
    tail_part: float = 0.2  # fraction of the length that tapers
    tail_tip: float = 0.12  # half-width at the tip, relative
    girth: float = 0.0  # extra mid-body thickness
    eye: float = 0.2  # eye radius, in r
    scale_contrast: float = 0.12
    posterior_scales: float = 0.0  # extra dark scale edges towards the tail
    size: float = 1.0  # body size relative to the ground's texture
    jitter: float = 0.1  # colour variation between individuals
    commonness: float = 0.5  # 0 = rarest, 1 = commonest (sets the number of observations)


_BLACK: RGB = (20, 20, 22)
_WHITE: RGB = (232, 230, 222)

LOOKS: dict[str, Look] = {
    "bungarus fasciatus": Look(
        ground=_BLACK,
        belly=(225, 190, 60),
        belly_from=1.0,
        bands=(Band((228, 188, 45), period=4.2, width=0.5, rings=True, wobble=0.04),),
        head_mark=HeadMark("chevron", (220, 180, 50)),
        ridge=0.8,
        gloss=0.3,
        tail_part=0.08,
        tail_tip=0.45,
        head_width=1.05,
        neck=0.95,
        commonness=0.8,
    ),
    "bungarus caeruleus": Look(
        ground=(28, 30, 38),
        belly=_WHITE,
        belly_from=0.88,
        bands=(Band(_WHITE, period=3.3, width=0.08, paired=True, start=0.1, fade=0.3),),
        ridge=0.6,
        gloss=0.4,
        head_width=1.05,
        neck=0.95,
        commonness=0.9,
    ),
    "bungarus candidus": Look(
        ground=(18, 18, 20),
        belly=_WHITE,
        belly_from=0.9,
        bands=(Band(_WHITE, period=4.6, width=0.42, chevron=-0.3, rings=True, wobble=0.08),),
        ridge=0.6,
        gloss=0.35,
        head_width=1.05,
        neck=0.95,
        commonness=0.4,
    ),
    "bungarus lividus": Look(
        ground=(58, 64, 78),
        belly=(205, 205, 198),
        belly_from=0.9,
        ridge=0.5,
        gloss=0.3,
        head_width=1.05,
        neck=0.95,
        commonness=0.1,
    ),
    "bungarus niger": Look(
        ground=(14, 14, 16),
        belly=(215, 212, 200),
        belly_from=0.86,
        ridge=0.7,
        gloss=0.85,
        head_width=1.05,
        neck=0.95,
        commonness=0.2,
    ),
    "bungarus slowinskii": Look(
        ground=(22, 22, 24),
        belly=(215, 205, 165),
        belly_from=0.92,
        bands=(Band((222, 210, 168), period=3.5, width=0.22, rings=True),),
        ridge=0.6,
        gloss=0.35,
        head_width=1.05,
        neck=0.95,
        commonness=0.0,
    ),
    "bungarus wanghaotingi": Look(
        ground=(20, 20, 24),
        belly=_WHITE,
        belly_from=0.92,
        bands=(Band(_WHITE, period=2.5, width=0.14, rings=True),),
        ridge=0.6,
        gloss=0.35,
        head_width=1.05,
        neck=0.95,
        commonness=0.05,
    ),
    "calliophis bivirgatus": Look(
        ground=(28, 38, 78),
        belly=(200, 62, 50),
        belly_from=0.96,
        head=(222, 52, 40),
        tail=(222, 60, 45),
        tail_colour_part=0.13,
        stripes=(Stripe((110, 170, 232), v=0.72, width=0.11),),
        gloss=0.6,
        length=72.0,
        head_length=2.2,
        head_width=0.95,
        neck=0.95,
        eye=0.14,
        commonness=0.5,
    ),
    "sinomicrurus macclellandi": Look(
        ground=(178, 72, 48),
        belly=(210, 190, 150),
        belly_from=0.95,
        head=(22, 22, 22),
        head_mark=HeadMark("collar", (230, 222, 190)),
        bands=(
            Band(
                (18, 18, 18),
                period=4.0,
                width=0.1,
                rings=True,
                edge=(232, 222, 190),
                edge_width=0.035,
            ),
        ),
        gloss=0.5,
        length=68.0,
        head_length=2.1,
        head_width=0.95,
        neck=0.95,
        eye=0.14,
        commonness=0.15,
    ),
    "naja kaouthia": Look(
        ground=(128, 94, 60),
        belly=(205, 188, 150),
        belly_from=0.9,
        bands=(Band((190, 170, 130), period=6.0, width=0.25, chevron=0.6, strength=0.18),),
        hood=Hood(width=2.2, length=6.5, mark="monocle", spread=0.7),
        gloss=0.25,
        length=50.0,
        jitter=0.25,
        commonness=1.0,
    ),
    "naja mandalayensis": Look(
        ground=(152, 128, 86),
        belly=(215, 200, 150),
        belly_from=0.88,
        hood=Hood(width=2.0, length=6.0, mark="none", spread=0.7),
        gloss=0.25,
        length=46.0,
        posterior_scales=0.2,
        jitter=0.2,
        commonness=0.12,
    ),
    "ophiophagus hannah": Look(
        ground=(72, 74, 46),
        belly=(205, 185, 115),
        belly_from=0.88,
        bands=(
            Band(
                (215, 205, 140),
                period=5.5,
                width=0.12,
                chevron=-1.0,
                start=0.1,
                fade=0.3,
                strength=0.85,
            ),
        ),
        head_mark=HeadMark("crossbars", (200, 190, 130)),
        hood=Hood(width=1.5, length=8.0, spread=0.6),
        gloss=0.35,
        length=70.0,
        head_width=1.2,
        size=1.6,
        jitter=0.18,
        commonness=0.6,
    ),
    "malayopython reticulatus": Look(
        ground=(150, 128, 82),
        belly=(200, 190, 160),
        belly_from=0.95,
        head=(168, 140, 80),
        head_mark=HeadMark("midline", (30, 24, 18)),
        net=Net((26, 20, 15), period=3.0, line=0.11, saddle=(118, 108, 92), spot=(218, 212, 196)),
        gloss=0.45,
        length=55.0,
        head_width=1.25,
        neck=0.8,
        girth=0.15,
        eye=0.16,
        size=1.4,
        commonness=0.7,
    ),
    "ptyas korros": Look(
        ground=(108, 100, 60),
        belly=(212, 202, 140),
        belly_from=0.82,
        head_mark=HeadMark("lips", (225, 215, 160)),
        gloss=0.3,
        length=66.0,
        head_length=2.7,
        eye=0.3,
        posterior_scales=0.5,
        jitter=0.14,
        commonness=0.3,
    ),
    "ptyas mucosa": Look(
        ground=(135, 106, 66),
        belly=(215, 200, 150),
        belly_from=0.85,
        head_mark=HeadMark("lip_bars", (40, 32, 24)),
        bands=(Band((38, 30, 22), period=3.6, width=0.22, start=0.45, fade=0.25, strength=0.8),),
        gloss=0.3,
        length=66.0,
        head_length=2.7,
        eye=0.28,
        posterior_scales=0.2,
        jitter=0.16,
        commonness=0.95,
    ),
    "python bivittatus": Look(
        ground=(180, 150, 100),
        belly=(215, 205, 175),
        belly_from=0.95,
        head_mark=HeadMark("spear", (82, 58, 36), start=0.1),
        blotches=Blotches(
            (86, 60, 36),
            edge=(25, 20, 15),
            period=3.3,
            length=1.25,
            width=0.62,
            lateral=(90, 64, 40),
        ),
        gloss=0.35,
        length=45.0,
        head_width=1.3,
        neck=0.8,
        girth=0.2,
        eye=0.15,
        size=1.3,
        commonness=0.75,
    ),
    "python molurus": Look(
        ground=(202, 186, 150),
        belly=(220, 210, 185),
        belly_from=0.95,
        head_mark=HeadMark("spear", (140, 100, 65), start=0.45),
        blotches=Blotches(
            (142, 96, 60),
            edge=(72, 52, 36),
            period=3.3,
            length=1.2,
            width=0.6,
            lateral=(140, 100, 66),
            lateral_centre=(205, 190, 160),
            edge_width=0.12,
        ),
        gloss=0.3,
        length=45.0,
        head_width=1.3,
        neck=0.8,
        girth=0.2,
        eye=0.15,
        size=1.3,
        commonness=0.25,
    ),
}


def look_for(name: str) -> Look:
    """The hand-made look of a default species, else one derived from a hash of the name."""
    key = normalise_name(name)
    return LOOKS.get(key) or _derived_look(key)


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(normalise_name(name).encode()).digest()[:4], "big")


def _derived_look(key: str) -> Look:
    rng = np.random.default_rng(_name_key(key))
    ground = _hsv(rng.uniform(0, 1), rng.uniform(0.2, 0.8), rng.uniform(0.15, 0.75))
    other = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.8), rng.uniform(0.1, 0.95))
    kind = rng.choice(["plain", "bands", "rings", "blotches", "stripes", "net"])
    look = Look(
        ground=ground,
        belly=_hsv(rng.uniform(0.05, 0.2), rng.uniform(0.0, 0.4), rng.uniform(0.6, 0.9)),
        belly_from=float(rng.uniform(0.8, 1.0)),
        gloss=float(rng.uniform(0.1, 0.7)),
        length=float(rng.uniform(40, 72)),
        head_width=float(rng.uniform(0.95, 1.35)),
        eye=float(rng.uniform(0.13, 0.3)),
        commonness=float(rng.uniform(0, 1)),
    )
    if kind in ("bands", "rings"):
        band = Band(
            other,
            period=float(rng.uniform(2.5, 6)),
            width=float(rng.uniform(0.1, 0.5)),
            chevron=float(rng.uniform(-1, 1)),
            rings=kind == "rings",
        )
        look = replace(look, bands=(band,))
    elif kind == "blotches":
        look = replace(
            look,
            blotches=Blotches(
                other,
                edge=_BLACK,
                period=float(rng.uniform(2.5, 5)),
                length=1.1,
                width=0.6,
                lateral=other,
            ),
        )
    elif kind == "stripes":
        look = replace(look, stripes=(Stripe(other, v=float(rng.uniform(0, 0.8)), width=0.12),))
    elif kind == "net":
        look = replace(
            look,
            net=Net(_BLACK, period=float(rng.uniform(2.5, 4)), line=0.1, saddle=ground, spot=other),
        )
    if rng.uniform() < 0.15:
        look = replace(look, hood=Hood(width=float(rng.uniform(1.5, 2.3)), length=6.5))
    return look


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


# ---------------------------------------------------------------------------------------------
# One individual: a look with its own colours, proportions and pattern phase.


@dataclass(frozen=True)
class Individual:
    look: Look
    phase: float  # pattern offset along the body, in r
    seed: float  # varies band and blotch irregularities between individuals


def _individual(look: Look, rng: np.random.Generator) -> Individual:
    brightness = math.exp(rng.normal(0, look.jitter))

    def colour(c: RGB) -> RGB:
        tint = np.exp(rng.normal(0, look.jitter / 2.5, 3)) * brightness
        r, g, b = (int(np.clip(x * t, 0, 255)) for x, t in zip(c, tint, strict=True))
        return (r, g, b)

    def vary(x: float, rel: float) -> float:
        return float(x * math.exp(rng.normal(0, rel)))

    bands = tuple(
        replace(
            b,
            colour=colour(b.colour),
            period=vary(b.period, 0.08),
            width=float(np.clip(vary(b.width, 0.12), 0.03, 0.7)),
        )
        for b in look.bands
    )
    changes: dict[str, Any] = {
        "ground": colour(look.ground),
        "belly": colour(look.belly),
        "bands": bands,
        "length": vary(look.length, 0.08),
        "gloss": float(np.clip(vary(look.gloss, 0.2), 0, 1)),
    }
    if look.head is not None:
        changes["head"] = colour(look.head)
    if look.tail is not None:
        changes["tail"] = colour(look.tail)
    if look.blotches is not None:
        b = look.blotches
        changes["blotches"] = replace(b, colour=colour(b.colour), period=vary(b.period, 0.08))
    if look.net is not None:
        changes["net"] = replace(look.net, saddle=colour(look.net.saddle))
    if look.hood is not None:
        changes["hood"] = replace(look.hood, width=vary(look.hood.width, 0.08))
    return Individual(
        replace(look, **changes), float(rng.uniform(0, 10)), float(rng.uniform(0, 100))
    )


# ---------------------------------------------------------------------------------------------
# Geometry: body path and width profile, in r.

_MAX_POINTS = 250  # body points are drawn as their index in an 8-bit image


def _profile(look: Look, s: np.ndarray, hood: bool) -> np.ndarray:
    """Half-width along the body (1 = mid-body), snout at s = 0."""
    hl, u = look.head_length, s / look.length
    head = look.head_width * np.sqrt(np.clip(1 - ((s - hl * 0.5) / (hl * 0.5)) ** 2, 0, 1))
    body = 1 - (1 - look.neck) * np.exp(-(((s - hl) / 1.2) ** 2))
    body = np.where(s > hl * 0.45, body, 0) * (1 + look.girth * (1 - (2 * u - 1) ** 2))
    tail = np.clip((1 - u) / look.tail_part, 0, 1)
    body = body * np.where(
        u > 1 - look.tail_part, look.tail_tip + (1 - look.tail_tip) * tail**0.8, 1
    )
    r = np.maximum(head, body)
    if hood and look.hood is not None:
        x = np.clip((s - hl * 0.9) / look.hood.length, 0, 1)
        r = np.maximum(r, look.hood.width * np.sin(np.pi * x) ** 0.6)
    return r


def _path(look: Look, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Body points (N, 2) and arc length (N,), from the snout, in r."""
    spacing = max(0.4, look.length / (_MAX_POINTS - 1))  # distance between body points, in r
    s = np.arange(0, look.length + spacing / 2, spacing)
    pose = rng.choice(["sinuous", "coiled", "stretched"], p=[0.5, 0.3, 0.2])
    wave = rng.uniform(0.05, 0.2) if pose == "sinuous" else rng.uniform(0.01, 0.06)
    kappa = wave * np.sin(2 * np.pi * s / rng.uniform(12, 28) + rng.uniform(0, 2 * np.pi))
    if pose == "coiled":
        # An Archimedean spiral around the tail, the head and neck free on the outside.
        from_tail = look.length - s
        coil = 1 / np.sqrt(rng.uniform(2.5, 4) ** 2 + 2.6 * from_tail / np.pi)
        free = np.clip((s / look.length - 0.12) / 0.2, 0, 1)
        kappa = free * coil * rng.choice([-1, 1]) + (1 - free) * kappa * 2
    drift = np.convolve(rng.normal(0, 0.04, len(s)), np.ones(15) / 15, mode="same")
    theta = rng.uniform(0, 2 * np.pi) + np.cumsum((kappa + drift) * spacing)
    steps = np.stack([np.cos(theta), np.sin(theta)], axis=1) * spacing
    return np.cumsum(steps, axis=0) - steps[0], s


# ---------------------------------------------------------------------------------------------
# Painting: colour of body pixels from body coordinates. Arrays are (n,) or (n, 3), floats 0..1.


def _c(rgb: RGB) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32) / 255


def _hash(a: np.ndarray, seed: float) -> np.ndarray:
    x = np.sin(a * 12.9898 + seed * 78.233) * 43758.5453
    return x - np.floor(x)


def _blend(col: np.ndarray, where: np.ndarray, rgb: RGB | np.ndarray, alpha: Any = 1.0) -> None:
    """Mix `rgb` into `col` (in place) where `where` holds, with opacity `alpha`."""
    target = _c(rgb) if isinstance(rgb, tuple) else rgb
    if where.dtype == bool:  # touch only the selected rows: most masks are sparse
        i = np.flatnonzero(where)
        a = alpha if np.isscalar(alpha) else np.asarray(alpha)[i, None]
        t = target if target.ndim == 1 else target[i]
        col[i] += a * (t - col[i])
    else:
        a = where[:, None] * (alpha if np.isscalar(alpha) else np.asarray(alpha)[:, None])
        col += a * (target - col)


def _smooth(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


def _paint(ind: Individual, s: np.ndarray, v: np.ndarray, rl: np.ndarray, hood: bool) -> np.ndarray:
    """Colour (n, 3) of body pixels at distance s from the snout and across-body position v."""
    look, seed = ind.look, ind.seed
    u = s / look.length
    av = np.abs(v)
    ay = av * rl  # distance from the backbone, in r
    col = np.broadcast_to(_c(look.ground), (len(s), 3)).copy()
    on_body = (s > look.head_length * 1.02).astype(np.float32)
    belly = _smooth(av, look.belly_from, look.belly_from + 0.06)

    _blend(col, belly, look.belly)
    for band in look.bands:
        x = (s - ind.phase + band.chevron * ay) / band.period
        k = np.floor(x)
        f = x - k + band.wobble * (np.sin(ay * 4 + _hash(k, seed) * 6) - 0.5 + _hash(k + 0.5, seed))
        f = f - np.floor(f)
        w = band.width * (0.85 + 0.3 * _hash(k, seed + 1))
        inside = f < w
        if band.paired:
            inside |= (f > 1.9 * w) & (f < 2.9 * w)
        strength = band.strength * (
            _smooth(u, band.start, band.start + band.fade) if band.fade else 1
        )
        cover = on_body * strength * (1 if band.rings else 1 - belly)
        if band.edge is not None:
            rim = ((f >= w) & (f < w + band.edge_width)) | (f > 1 - band.edge_width)
            _blend(col, rim, band.edge, cover)
        _blend(col, inside, band.colour, cover)
    if look.blotches is not None:
        _paint_blotches(col, look.blotches, ind, s, av, ay, on_body * (1 - belly))
    if look.net is not None:
        _paint_net(col, look.net, ind, s, av, on_body * (1 - belly))
    for stripe in look.stripes:
        _blend(col, np.abs(av - stripe.v) < stripe.width, stripe.colour, on_body)
    if look.tail is not None:
        _blend(
            col, _smooth(u, 1 - look.tail_colour_part - 0.02, 1 - look.tail_colour_part), look.tail
        )
    _paint_head(col, look, s, v, av, rl, hood)

    # Scales: a diamond lattice in body coordinates, dark edges, each scale a little different.
    a, b = s / 0.45 + v * rl / 0.36, s / 0.45 - v * rl / 0.36
    fa, fb = a - np.floor(a), b - np.floor(b)
    edge = _smooth(np.maximum(np.abs(fa - 0.5), np.abs(fb - 0.5)) * 2, 0.6, 1.0)
    contrast = look.scale_contrast + look.posterior_scales * _smooth(u, 0.35, 0.85)
    shade = 1 - contrast * edge + 0.06 * (_hash(np.floor(a) * 7.1 + np.floor(b), seed) - 0.5)
    return col * shade[:, None]


def _paint_blotches(
    col: np.ndarray,
    b: Blotches,
    ind: Individual,
    s: np.ndarray,
    av: np.ndarray,
    ay: np.ndarray,
    cover: np.ndarray,
) -> None:
    x = (s - ind.phase) / b.period
    k = np.round(x)
    ds = (x - k) * b.period
    h1, h2 = _hash(k, ind.seed), _hash(k + 0.3, ind.seed)
    length, width = b.length * (0.75 + 0.5 * h1), b.width * (0.75 + 0.5 * h2)
    wavy = 0.12 * np.sin(ds * 3.1 + ay * 4.3 + h1 * 6.3)
    d = np.sqrt((ds / length) ** 2 + (ay / width) ** 2) + wavy
    _blend(col, (d >= 1) & (d < 1 + b.edge_width), b.edge, cover)
    _blend(col, d < 1, b.colour, cover)
    if b.lateral is not None:
        x2 = x + 0.5
        k2 = np.round(x2)
        ds2 = (x2 - k2) * b.period
        d2 = np.sqrt((ds2 / (length * 0.55)) ** 2 + ((av - 0.8) / 0.2) ** 2) + wavy
        _blend(col, (d2 >= 1) & (d2 < 1 + b.edge_width * 1.5), b.edge, cover)
        _blend(col, d2 < 1, b.lateral, cover)
        if b.lateral_centre is not None:
            _blend(col, d2 < 0.45, b.lateral_centre, cover)


def _paint_net(
    col: np.ndarray, net: Net, ind: Individual, s: np.ndarray, av: np.ndarray, cover: np.ndarray
) -> None:
    x = (s - ind.phase) / net.period
    wob = 0.06 * np.sin(x * 2.3 + ind.seed)
    d1 = np.abs((x + av * 1.1 + wob) % 1 - 0.5)
    d2 = np.abs((x - av * 1.1 - wob) % 1 - 0.5)
    cell = (d1 < 0.5 - net.line) & (d2 < 0.5 - net.line)
    _blend(col, cell & (av < 0.42), net.saddle, cover)
    _blend(col, cell & (av > 0.5) & (np.maximum(d1, d2) < 0.17), net.spot, cover)
    _blend(col, ~cell | (av < 0.05), net.colour, cover)


def _paint_head(
    col: np.ndarray,
    look: Look,
    s: np.ndarray,
    v: np.ndarray,
    av: np.ndarray,
    rl: np.ndarray,
    hood: bool,
) -> None:
    hl = look.head_length
    hs = s / hl  # 0 at the snout, 1 at the back of the head
    head = (hs < 1.02).astype(np.float32)
    if look.head is not None:
        _blend(col, _smooth(-hs, -1.12, -0.98), look.head)
    m = look.head_mark
    if m is not None:
        if m.kind == "chevron":
            where = np.abs(hs - (0.95 - 0.45 * av)) < 0.1
        elif m.kind == "collar":
            where = (hs > 0.6) & (hs < 0.85)
        elif m.kind == "spear":
            where = (av < 0.2 + 0.55 * hs) & (hs > m.start) & (hs < 1.15)
        elif m.kind == "midline":
            where = (av < 0.08) & (hs < 1.3)
        elif m.kind == "crossbars":
            where = (np.abs(hs - 0.45) < 0.06) | (np.abs(hs - 0.75) < 0.06)
        elif m.kind == "lip_bars":  # dark bars across the jaw margins
            where = (av > 0.78) & (hs > 0.1) & ((hs * 5) % 1 < 0.45)
        else:  # lips: a plain band along the jaw margins
            where = (av > 0.78) & (hs > 0.1)
        _blend(col, where, m.colour, head if m.kind != "spear" else 1.0)
    if hood and look.hood is not None and look.hood.mark == "monocle":
        centre = hl * 0.9 + look.hood.length * 0.5
        d = np.sqrt(((s - centre) / (0.17 * look.hood.length)) ** 2 + (v * rl / 0.75) ** 2)
        _blend(col, d < 0.95, col * 0.35)
        _blend(col, (d > 0.42) & (d < 0.75), look.hood.mark_colour)
    # Eyes: dark discs at the sides of the head with a catch-light.
    d = np.sqrt((s - 0.35 * hl) ** 2 + (av * rl - 0.62 * look.head_width) ** 2)
    _blend(col, d < look.eye, (16, 15, 14))
    _blend(col, d < look.eye * 0.35, (200, 200, 200), 0.6)


# ---------------------------------------------------------------------------------------------
# Rendering one photo.

_GROUNDS: dict[str, tuple[RGB, ...]] = {
    "grass": ((66, 92, 38), (104, 124, 52), (148, 140, 78), (52, 78, 34)),
    "litter": ((92, 70, 48), (140, 92, 46), (172, 124, 62), (110, 78, 42), (190, 152, 84)),
    "soil": ((120, 90, 64), (150, 120, 88), (96, 80, 70), (130, 100, 80)),
    "concrete": ((152, 150, 144), (122, 120, 114), (170, 166, 158)),
    "rock": ((112, 106, 100), (134, 122, 106), (90, 88, 86)),
    "sand": ((200, 180, 140), (186, 164, 124), (214, 196, 160)),
    "tiles": ((200, 194, 184), (168, 150, 130), (210, 206, 198)),
}


@dataclass(frozen=True)
class _Ground:
    kind: str
    palette: tuple[np.ndarray, ...]
    grain: float  # texture scale, px per unit
    canvas: np.ndarray  # (H, W, 3) float32, cropped by each photo


def _ground(rng: np.random.Generator, side: int, grain: float) -> _Ground:
    """A square ground texture (side x side) that the photos of one observation crop."""
    kind = str(rng.choice(list(_GROUNDS)))
    base = _GROUNDS[kind]
    if rng.uniform() < 0.1:  # now and then an odd colour
        base = tuple(
            _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.45), rng.uniform(0.3, 0.8)) for _ in base
        )
    tint = np.exp(rng.normal(0, 0.08, 3)).astype(np.float32)
    palette = tuple(_c(c) * tint for c in base)
    # Drawn at half size and scaled up: 4x cheaper, and a ground slightly out of focus is
    # what a photo of a snake looks like anyway.
    half, g = side // 2 + 1, grain / 2
    # Smooth noise mapped through three palette colours: patchy ground, no hard blotches.
    n = np.tanh(0.8 * _fractal(rng, half, half, g, octaves=3))[..., None]
    p0, p1, p2 = palette[0], palette[1], palette[2 % len(palette)]
    canvas = np.where(n < 0, p1 + n * (p1 - p0), p1 + n * (p2 - p1))
    img = Image.fromarray(np.clip(canvas * 255, 0, 255).astype(np.uint8))
    _draw_details(ImageDraw.Draw(img), rng, kind=kind, palette=palette, half=half, g=g)
    img = img.resize((side, side), Image.Resampling.BICUBIC)
    canvas = np.asarray(img, dtype=np.float32)
    canvas *= 1 / 255
    return _Ground(kind, palette, grain, canvas)


def _draw_details(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    *,
    kind: str,
    palette: tuple[np.ndarray, ...],
    half: int,
    g: float,
) -> None:
    """The ground's own shapes on the half-size image: grass blades, leaves, pebbles, cracks, tiles.

    `half` is that image's side and `g` the texture scale at that size (`grain / 2`).
    """
    area = half * half
    # Random numbers are drawn in blocks: one call per shape would dominate the run time.
    if kind == "grass":
        n = int(area / (70 * g))
        xy = rng.uniform(0, half, (n, 2))
        ang = -np.pi / 2 + rng.normal(0, 0.5, n)
        ln = rng.uniform(5, 22, n) * g
        end = xy + ln[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1)
        colours = _colours(rng, palette, n)
        widths = np.maximum(1, np.round(rng.uniform(0.5, 1.8, n) * g)).astype(int)
        for i in range(n):
            draw.line([tuple(xy[i]), tuple(end[i])], fill=colours[i], width=int(widths[i]))
    elif kind == "litter":
        n = int(area / (280 * g * g))
        xy = rng.uniform(0, half, (n, 2))
        size = rng.uniform(3.5, 9, n) * g
        ang = rng.uniform(0, np.pi, n)
        colours = _colours(rng, palette, n)
        for i in range(n):
            _leaf(draw, xy[i], size[i], ang[i], colours[i])
    elif kind in ("soil", "sand"):
        n = int(area / (700 * g * g))
        xy = rng.uniform(0, half, (n, 2))
        rad = rng.uniform(1.5, 4, n) * g
        colours = _colours(rng, palette, n)
        for i in range(n):
            (x, y), r = xy[i], rad[i]
            dark = tuple(int(c * 0.6) for c in colours[i])
            draw.ellipse([x - r, y - r * 0.7, x + r, y + r * 0.7], fill=colours[i], outline=dark)
    elif kind == "concrete":
        for _ in range(int(rng.integers(0, 4))):
            pts = np.cumsum(rng.normal(0, 6 * g, (12, 2)), axis=0) + rng.uniform(0, half, 2)
            draw.line([tuple(p) for p in pts], fill=_rgb(palette[0] * 0.55), width=1)
    elif kind == "tiles":
        step = rng.uniform(40, 110) * g
        for i in range(int(half / step) + 1):
            draw.line([(i * step, 0), (i * step, half)], fill=_rgb(palette[1] * 0.8), width=1)
            draw.line([(0, i * step), (half, i * step)], fill=_rgb(palette[1] * 0.8), width=1)


def _fractal(
    rng: np.random.Generator, w: int, h: int, grain: float, octaves: int = 4
) -> np.ndarray:
    """Smooth noise (h, w) with features from about 150 px down to 3 px (times grain)."""
    out = np.zeros((h, w), dtype=np.float32)
    for cell, amp in ((150, 0.8), (40, 0.6), (12, 0.4), (3, 0.3))[:octaves]:
        cell = max(cell * grain, 1.5)
        small = rng.standard_normal((int(h / cell) + 2, int(w / cell) + 2), dtype=np.float32)
        out += amp * np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))
    return out


def _colours(rng: np.random.Generator, palette: tuple[np.ndarray, ...], n: int) -> list[RGB]:
    """n colours drawn from the palette, each lighter or darker."""
    picks = np.stack(palette)[rng.integers(len(palette), size=n)] * rng.uniform(0.7, 1.3, (n, 1))
    return [tuple(c) for c in np.clip(picks * 255, 0, 255).astype(int).tolist()]


def _pick(rng: np.random.Generator, palette: tuple[np.ndarray, ...]) -> np.ndarray:
    return palette[int(rng.integers(len(palette)))]


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(x) for x in np.clip(np.asarray(c) * 255, 0, 255))
    return (r, g, b)


def _leaf(
    draw: ImageDraw.ImageDraw, centre: np.ndarray, size: float, ang: float, colour: RGB
) -> None:
    pts = _LEAF * size
    c, si = math.cos(ang), math.sin(ang)
    x = pts[:, 0] * c - pts[:, 1] * si + centre[0]
    y = pts[:, 0] * si + pts[:, 1] * c + centre[1]
    dark = tuple(int(v * 0.72) for v in colour)
    draw.polygon(list(zip(x.tolist(), y.tolist(), strict=True)), fill=colour, outline=dark)
    draw.line([(x[0], y[0]), (x[7], y[7])], fill=dark, width=1)  # midrib


_t = np.linspace(0, 2 * np.pi, 14, endpoint=False)
_LEAF = np.stack([np.cos(_t), 0.42 * np.sin(_t) * np.abs(np.sin(_t / 2) + 0.3)], 1)  # unit leaf


def _render(
    ind: Individual, ground: _Ground, rng: np.random.Generator, width: int, height: int, short: int
) -> Image.Image:
    """One photo (width x height) of the individual in a new pose on a crop of its ground."""
    look = ind.look
    hood = look.hood is not None and rng.uniform() < look.hood.spread
    pts, s = _path(look, rng)
    r = _profile(look, s, hood)
    px, scale = _place(pts, rng, width, height, short)
    body = _body_pixels(px, r * scale, width, height)
    k = body.segment
    along = body.along / np.float32(scale)  # in r
    rl = r[k] + np.clip(along / (s[1] - s[0]), 0, 1) * (r[np.minimum(k + 1, len(r) - 1)] - r[k])
    rl = rl.astype(np.float32)
    v = np.clip(body.lateral / (np.maximum(rl, 0.05) * np.float32(scale)), -1, 1)
    col = _paint(ind, s.astype(np.float32)[k] + along, v, rl, hood)
    light = _light(rng)
    col = _shade(col, v, body.normal, light, look)

    alpha = (body.cover.astype(np.float32) * 0.25)[..., None]  # (H, W, 1)
    snake = np.zeros((height, width, 3), np.float32)  # premultiplied by alpha
    snake[body.y, body.x] = np.clip(col, 0, 1.2) * alpha[body.y, body.x]

    # Ground: a crop of the observation's canvas; a soft shadow under the body.
    gy = int(rng.integers(0, ground.canvas.shape[0] - height + 1))
    gx = int(rng.integers(0, ground.canvas.shape[1] - width + 1))
    back = ground.canvas[gy : gy + height, gx : gx + width].copy()
    if rng.uniform() < 0.5:
        back = back[:, ::-1]
    if rng.uniform() < 0.25:  # shallow depth of field
        back = _blur(back, rng.uniform(1, 3))
    # Blurred at half size: a soft shadow needs no detail and this is 4x cheaper.
    shadow_img = Image.fromarray((alpha[..., 0] * 255).astype(np.uint8)).reduce(2)
    shadow_img = shadow_img.filter(ImageFilter.GaussianBlur(scale * 0.3))
    shadow_img = shadow_img.resize((width, height), Image.Resampling.BILINEAR)
    shift = (-light[:2] * scale * 0.5).round().astype(int)
    shadow = np.roll(np.asarray(shadow_img, dtype=np.float32), (shift[1], shift[0]), (0, 1))
    back *= (1 - 0.4 / 255 * shadow)[..., None]
    back *= 1 - alpha
    back += snake
    image = _occlude(back, rng, px, scale, ground)
    return _camera(image, rng)


def _place(
    pts: np.ndarray, rng: np.random.Generator, width: int, height: int, short: int
) -> tuple[np.ndarray, float]:
    """Body points in pixels (N, 2), and the pixels per r (the mid-body half-width)."""
    # Real photos often crop part of a long body, so it may overflow the frame by up to 2x.
    scale = short * rng.uniform(0.035, 0.07)
    extent = pts.max(0) - pts.min(0) + 2
    fit = float(np.min(np.array([width, height]) * rng.uniform(1.0, 2.0) / extent))
    scale = min(scale, max(short * 0.025, fit))
    px = pts * scale
    lo, hi = px.min(0) - scale, px.max(0) + scale
    frame = np.array([width, height], dtype=float)
    # At random where the body fits, else centred; then (mostly) the head pulled into view.
    offset = np.where(
        hi - lo < frame,
        rng.uniform(0, 1, 2) * (frame - (hi - lo)) - lo,
        (frame - (hi + lo)) / 2 + rng.normal(0, 0.1, 2) * frame,
    )
    px = px + offset
    if rng.uniform() < 0.92:
        margin = 3 * scale
        px = px + np.clip(px[0], margin, frame - margin) - px[0]
    return px, scale


@dataclass(frozen=True)
class _BodyPixels:
    """The output pixels the body covers, each with the body segment that owns it."""

    cover: np.ndarray  # (H, W) uint8: how many of the pixel's 4 sub-samples the body covers
    y: np.ndarray  # (n,) pixel rows
    x: np.ndarray  # (n,) pixel columns
    segment: np.ndarray  # (n,) index of the body point starting the segment
    along: np.ndarray  # (n,) px from that point along the body
    lateral: np.ndarray  # (n,) px from the centre line, signed
    normal: np.ndarray  # (n, 2) the segment's unit normal, in image coordinates


def _body_pixels(px: np.ndarray, radius: np.ndarray, width: int, height: int) -> _BodyPixels:
    """Rasterise the body (points px (N, 2), half-widths radius (N,), both in px)."""
    # Segment indices drawn at 2x into an 8-bit image, tail first so the head lies on top.
    tan = np.gradient(px, axis=0)
    tan /= np.linalg.norm(tan, axis=1, keepdims=True) + 1e-9
    nrm = np.stack([-tan[:, 1], tan[:, 0]], 1)
    left, right = (px + nrm * radius[:, None]) * 2, (px - nrm * radius[:, None]) * 2  # (N, 2)
    index = Image.new("L", (width * 2, height * 2), 0)
    draw = ImageDraw.Draw(index)
    for k in range(len(px) - 2, -1, -1):
        cx, cy, rr = px[k, 0] * 2, px[k, 1] * 2, radius[k] * 2
        if rr > 0.5:  # a disc at each joint keeps bends round
            draw.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=k + 1)
        quad = [tuple(left[k]), tuple(left[k + 1]), tuple(right[k + 1]), tuple(right[k])]
        draw.polygon(quad, fill=k + 1)
    # Coverage from the 2x samples anti-aliases the outline; colour is painted once per output
    # pixel (4x cheaper), from the segment under the pixel's centre or else any covering one.
    idx2 = np.asarray(index)
    subs = (idx2[0::2, 0::2], idx2[1::2, 0::2], idx2[0::2, 1::2], idx2[1::2, 1::2])
    cover = sum((q > 0).astype(np.uint8) for q in subs)
    idx = np.where(subs[3] > 0, subs[3], np.maximum.reduce(subs))
    ys, xs = np.nonzero(idx)
    k = idx[ys, xs].astype(np.intp) - 1
    p32, t32, n32 = (a.astype(np.float32)[k] for a in (px, tan, nrm))
    dx = xs.astype(np.float32) + 0.5 - p32[:, 0]
    dy = ys.astype(np.float32) + 0.5 - p32[:, 1]
    along = dx * t32[:, 0] + dy * t32[:, 1]
    lateral = dx * n32[:, 0] + dy * n32[:, 1]
    return _BodyPixels(cover, ys, xs, k, along, lateral, n32)


def _light(rng: np.random.Generator) -> np.ndarray:
    """Unit vector towards the light (3,): random direction, 35 to 57 degrees from overhead."""
    az, el = rng.uniform(0, 2 * np.pi), rng.uniform(0.35, 1.0)
    return np.array([np.cos(az) * np.sin(el), np.sin(az) * np.sin(el), np.cos(el)], np.float32)


def _shade(
    col: np.ndarray, v: np.ndarray, normal: np.ndarray, light: np.ndarray, look: Look
) -> np.ndarray:
    """Light the body as a cylinder (a roof for a krait's ridged back): diffuse plus gloss."""
    lv = np.sign(v) * np.abs(v) ** np.float32(1 - 0.5 * look.ridge)
    nz = np.sqrt(np.clip(1 - lv**2, 0, 1))
    nx, ny = lv * normal[:, 0], lv * normal[:, 1]
    diffuse = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0, 1)
    half = light + np.array([0, 0, 1], np.float32)  # Blinn: halfway to a viewer overhead
    half /= np.linalg.norm(half)
    spec = np.clip(nx * half[0] + ny * half[1] + nz * half[2], 0, 1) ** 24
    col = col * (0.42 + 0.58 * diffuse)[:, None] + (spec * np.float32(look.gloss * 0.7))[:, None]
    if look.ridge:
        col += (look.ridge * 0.06 * (np.abs(v) < 0.06))[
            :, None
        ]  # the raised backbone catches light
    return col


def _blur(img: np.ndarray, radius: float) -> np.ndarray:
    # A box blur: several times cheaper than a Gaussian on RGB, and looks the same here.
    pil = Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8))
    out = np.asarray(pil.filter(ImageFilter.BoxBlur(radius)), dtype=np.float32)
    out *= 1 / 255
    return out


def _occlude(
    image: np.ndarray, rng: np.random.Generator, px: np.ndarray, scale: float, ground: _Ground
) -> np.ndarray:
    """Now and then a branch, leaves or grass blades in front of part of the body."""
    if rng.uniform() > 0.35:
        return image
    h, w = image.shape[:2]
    inside = px[(px[:, 0] > 0) & (px[:, 0] < w) & (px[:, 1] > 0) & (px[:, 1] < h)]
    if len(inside) == 0:
        return image
    # Not over the head (first points): the head holds most of the clues.
    at = inside[int(rng.integers(min(len(inside) - 1, 15), len(inside)))]
    img = Image.fromarray(np.clip(image * 255, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    kind = rng.choice(["branch", "leaves", "grass"])
    if kind == "branch":
        ang = rng.uniform(0, np.pi)
        d = np.array([np.cos(ang), np.sin(ang)]) * (w + h)
        colour = np.array([0.32, 0.24, 0.16]) * rng.uniform(0.6, 1.4)
        width = max(2, round(scale * rng.uniform(0.6, 1.6)))
        draw.line([tuple(at - d), tuple(at + d)], fill=_rgb(colour), width=width)
        draw.line([tuple(at - d), tuple(at + d)], fill=_rgb(colour * 1.3), width=max(1, width // 4))
    elif kind == "leaves":
        green = np.array([0.25, 0.42, 0.16]) * rng.uniform(0.7, 1.3)
        colour = green if rng.uniform() < 0.6 else _pick(rng, ground.palette)
        for _ in range(int(rng.integers(1, 4))):
            _leaf(
                draw,
                at + rng.normal(0, 2 * scale, 2),
                scale * rng.uniform(1.5, 3.5),
                rng.uniform(0, np.pi),
                _rgb(colour),
            )
    else:
        green = np.array([0.36, 0.5, 0.2]) * rng.uniform(0.7, 1.3)
        for _ in range(int(rng.integers(5, 15))):
            x = at[0] + rng.normal(0, 3 * scale)
            top = at[1] + rng.normal(0, 2 * scale) - rng.uniform(2, 6) * scale
            draw.line(
                [(x, h), (x + rng.normal(0, scale), top)],
                fill=_rgb(green * rng.uniform(0.7, 1.3)),
                width=max(1, round(scale * 0.3)),
            )
    return np.asarray(img, dtype=np.float32) / 255


def _camera(image: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Light and camera: exposure, white balance, a light gradient, contrast, blur, noise."""
    h, w = image.shape[:2]
    temp = rng.normal(0, 0.05)
    gain = np.array([1 + temp, 1, 1 - temp], np.float32) * np.float32(math.exp(rng.normal(0, 0.18)))
    ang, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.45)
    gx = (np.arange(w, dtype=np.float32) / w - 0.5) * np.float32(np.cos(ang) * strength)
    gy = (np.arange(h, dtype=np.float32) / h - 0.5) * np.float32(np.sin(ang) * strength)
    light = 1 + gx[None, :] + gy[:, None]  # (H, W)
    if rng.uniform() < 0.25:  # dappled light through leaves
        light = light + 0.25 * (_fractal(rng, w, h, rng.uniform(0.3, 0.8), octaves=2) > 0.5)
    contrast = np.float32(rng.uniform(0.8, 1.2))
    mean = float((image[::4, ::4] * light[::4, ::4, None] * gain).mean())
    # Exposure, light and contrast in one multiply-add: (image * light * gain - mean) * c + mean.
    image *= light[..., None]  # in place: fresh full-size arrays cost more than the arithmetic
    image *= gain * contrast
    image += np.float32(mean * (1 - contrast))
    if rng.uniform() < 0.3:
        image = _blur(image, rng.uniform(0.4, 1.4))
    noise = rng.random((h, w, 1), dtype=np.float32)
    noise -= 0.5
    noise *= np.float32(rng.uniform(0, 0.06))  # sensor noise, uniform
    image += noise
    image *= 255
    image += 0.5
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# The photo set.

_ASPECTS = (1.0, 4 / 3, 4 / 3, 3 / 2, 16 / 9)


def observation_counts(cfg: DemoConfig, species: list[Species]) -> dict[str, int]:
    """Observations per species: from `observations_common` for the commonest down to
    `observations_rare` for the rarest, on a geometric scale by commonness rank."""
    ranked = sorted(species, key=lambda sp: (look_for(sp.name).commonness, sp.name))
    n = len(ranked)
    ratio = cfg.observations_common / cfg.observations_rare
    return {
        sp.name: round(cfg.observations_rare * ratio ** (i / (n - 1) if n > 1 else 1))
        for i, sp in enumerate(ranked)
    }


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@dataclass(frozen=True)
class _Observation:
    """One synthetic individual to photograph; everything its photos depend on."""

    look: Look
    key: int  # from the species name, so adding a species leaves the others' photos alone
    index: int
    seed: int
    max_photos: int
    image_size: int


def _photograph(obs: _Observation) -> list[tuple[bytes, int, int]]:
    """JPEG bytes, width and height of each photo of one individual."""
    rng = np.random.default_rng([obs.seed, obs.key, obs.index])
    ind = _individual(obs.look, rng)
    n_photos = int(rng.integers(1, obs.max_photos + 1))
    short = round(obs.image_size * rng.uniform(0.9, 1.1))
    long_ = round(short * float(rng.choice(_ASPECTS)))
    # A bigger snake makes the ground's texture look finer.
    grain = obs.image_size / 288 * rng.uniform(0.7, 1.4) / obs.look.size
    ground = _ground(rng, round(long_ * 1.15), grain)
    photos = []
    for p in range(n_photos):
        prng = np.random.default_rng([obs.seed, obs.key, obs.index, p + 1])
        w, h = (short, long_) if prng.uniform() < 0.3 else (long_, short)  # some portrait
        img = _render(ind, ground, prng, w, h, short)
        photos.append((_jpeg(img, int(prng.integers(60, 96))), w, h))
    return photos


def generate_demo(
    cfg: DemoConfig,
    species: list[Species],
    out_dir: Path,
    *,
    seed: int,
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """Write the synthetic photo set under `out_dir/images/` and return its manifest rows.

    The same seed and config give byte-identical files and rows, whatever `workers` is
    (processes rendering in parallel; None: one per CPU for a full-size set).
    """
    seed &= 0xFFFFFFFF  # numpy seeds must be non-negative
    counts = observation_counts(cfg, species)
    jobs = [
        (
            sp,
            _Observation(
                look_for(sp.name),
                _name_key(sp.name),
                i,
                seed,
                cfg.max_photos_per_observation,
                cfg.image_size,
            ),
        )
        for sp in species
        for i in range(counts[sp.name])
    ]
    if workers is None:
        workers = min(_cpus(), 8) if len(jobs) >= 40 else 1  # a pool costs more for a few
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(workers))
            results = pool.map(_photograph, [o for _, o in jobs], chunksize=4)
        else:
            results = map(_photograph, [o for _, o in jobs])
        bar = stack.enter_context(tqdm(total=len(jobs), desc="demo", unit="obs", disable=None))
        for n, ((sp, _), photos) in enumerate(zip(jobs, results, strict=True), start=1):
            folder = species_dir(out_dir, sp.name)
            folder.mkdir(parents=True, exist_ok=True)
            for data, w, h in photos:
                photo_id = f"demo-{len(rows) + 1:06d}"
                path = folder / f"{photo_id}.jpg"
                path.write_bytes(data)
                sha = hashlib.sha256(data).hexdigest()
                rows.append(_row(photo_id, f"demo-obs-{n:06d}", sp.name, path, sha, (w, h)))
            bar.update()
    _add_faults(cfg, rows, seed)
    return rows


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # the CPUs this process may use (Linux)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _row(
    photo_id: str, obs_id: str, taxon: str, path: Path, sha256: str, size: tuple[int, int] | None
) -> dict[str, Any]:
    return {
        "photo_id": photo_id,
        "observation_id": obs_id,
        "taxon": taxon,
        "path": path.as_posix(),
        "source": SOURCE,
        "license": LICENSE,
        "attribution": ATTRIBUTION,
        "url": "",
        "width": size[0] if size else "",
        "height": size[1] if size else "",
        "sha256": sha256,
    }


_NOT_AN_IMAGE = b"<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


def _add_faults(cfg: DemoConfig, rows: list[dict[str, Any]], seed: int) -> None:
    """Append broken files (truncated, empty, not an image) and byte-identical duplicates.

    Each lands in a real observation under a new photo id, as a failed or repeated download
    would; duplicates alternate between the original's observation and another of its species.
    """
    rng = np.random.default_rng([seed, 0xFA17])
    originals = list(rows)
    by_taxon: dict[str, list[str]] = {}
    for r in originals:
        by_taxon.setdefault(r["taxon"], [])
        if r["observation_id"] not in by_taxon[r["taxon"]]:
            by_taxon[r["taxon"]].append(r["observation_id"])
    kinds = ["truncated", "empty", "text"]
    for i in range(cfg.broken_files + cfg.duplicates):
        src = originals[int(rng.integers(len(originals)))]
        photo_id = f"demo-{len(rows) + 1:06d}"
        path = Path(src["path"]).with_name(f"{photo_id}.jpg")
        if i < cfg.broken_files:
            kind = kinds[i % len(kinds)]
            original = Path(src["path"]).read_bytes()
            data = {
                "truncated": original[: len(original) // 2],
                "empty": b"",
                "text": _NOT_AN_IMAGE,
            }[kind]
            obs_id, size = src["observation_id"], None
        else:
            data = Path(src["path"]).read_bytes()
            others = [o for o in by_taxon[src["taxon"]] if o != src["observation_id"]]
            same = (i - cfg.broken_files) % 2 == 0 or not others
            obs_id = src["observation_id"] if same else others[int(rng.integers(len(others)))]
            size = (src["width"], src["height"])
        path.write_bytes(data)
        rows.append(_row(photo_id, obs_id, src["taxon"], path, sha256_file(path), size))
