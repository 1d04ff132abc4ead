"""verify: every kind of bad photo is dropped with its reason; kept photos are normalised."""

from __future__ import annotations

import csv
import io
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from snakeid.config import ParamsError, section
from snakeid.data.manifest import CLEAN_COLUMNS, MANIFEST_COLUMNS
from snakeid.data.verify import VerifyConfig, run, verify_photos
from snakeid.errors import UserError
from snakeid.images import to_rgb
from snakeid.taxa import Species

NAJA, BUNG = "Naja kaouthia", "Bungarus fasciatus"
SPECIES = [Species(NAJA, "Monocled Cobra", True), Species(BUNG, "Banded Krait", True)]
CFG = VerifyConfig(min_side=64, resize_shorter=256, near_dup_distance=4)


def photo(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A smooth random RGB image; different seeds give pHashes ~30 bits apart."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)


def save(im: Image.Image, path: Path, fmt: str | None = None, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, **kw)
    return path


def row(pid: str, path: Path | str, taxon: str = NAJA) -> dict[str, str]:
    return dict.fromkeys(MANIFEST_COLUMNS, "") | {
        "photo_id": pid,
        "observation_id": f"o-{pid}",
        "taxon": taxon,
        "path": str(path),
        "source": "demo-synthetic",
        "sha256": "raw-" + pid,
    }


def accounted(result, rows) -> None:
    m = result.metrics
    assert m["kept"] + m["dropped"] == m["seen"] == len(rows)
    ids = [r["photo_id"] for r in result.kept] + [r["photo_id"] for r in result.dropped]
    assert sorted(ids) == sorted(r["photo_id"] for r in rows)


def verify_one(tmp_path: Path, im_path: Path, cfg: VerifyConfig = CFG) -> Image.Image:
    """Verify a single photo that must be kept; return its clean copy, decoded."""
    rows = [row("p1", im_path)]
    result = verify_photos(rows, SPECIES, cfg, tmp_path / "clean")
    accounted(result, rows)
    assert [r["photo_id"] for r in result.kept] == ["p1"], result.dropped
    with Image.open(result.kept[0]["path"]) as out:
        assert out.format == "JPEG" and out.mode == "RGB"
        return out.copy()


def png_header(width: int, height: int) -> bytes:
    """A PNG that only claims its size: what a decompression bomb shows before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def messy(tmp_path: Path) -> list[dict[str, str]]:
    """A raw folder with one photo of every kind verify must catch."""
    d = tmp_path / "raw"
    good = save(photo(1), d / "p01.jpg", quality=90)
    rows = [row("p01", good)]

    data = good.read_bytes()
    (d / "p02.jpg").write_bytes(data[: len(data) // 2])
    (d / "p03.jpg").write_bytes(b"")
    (d / "p04.jpg").write_text("this is not an image\n")
    save(photo(4, (40, 30)), d / "p05.jpg")
    (d / "p06.jpg").write_bytes(data)  # byte-identical copy of p01
    rows += [row(f"p0{i}", d / f"p0{i}.jpg") for i in range(2, 7)]

    # Same pixels, different bytes: two PNG encodings.
    save(photo(7), d / "p07.png", compress_level=9)
    save(photo(7), d / "p08.png", compress_level=1)
    assert (d / "p07.png").read_bytes() != (d / "p08.png").read_bytes()
    rows += [row("p07", d / "p07.png"), row("p08", d / "p08.png")]

    # Near duplicate: brightened and recompressed.
    save(photo(9), d / "p09.jpg", quality=95)
    save(ImageEnhance.Brightness(photo(9)).enhance(1.08), d / "p10.jpg", quality=70)
    rows += [row("p09", d / "p09.jpg"), row("p10", d / "p10.jpg")]

    # The same photo labelled as two species: near and exact.
    save(photo(11), d / "p11.jpg", quality=95)
    save(photo(11), d / "p12.jpg", quality=75)
    save(photo(13), d / "p13.png")
    save(photo(13), d / "p14.png")
    rows += [row("p11", d / "p11.jpg"), row("p12", d / "p12.jpg", BUNG)]
    rows += [row("p13", d / "p13.png", BUNG), row("p14", d / "p14.png")]

    (d / "p15.png").write_bytes(png_header(100_000, 100_000))
    rows += [row("p15", d / "p15.png"), row("p16", d / "gone.jpg", BUNG)]
    save(photo(17), d / "p17.jpg")  # a second good photo, of the other species
    rows.append(row("p17", d / "p17.jpg", BUNG))
    return rows


EXPECTED = {
    "p02": "unreadable",
    "p03": "unreadable",
    "p04": "unreadable",
    "p05": "too_small",
    "p06": "duplicate",
    "p08": "duplicate",
    "p10": "near_duplicate",
    "p12": "cross_species_near_duplicate",
    "p14": "cross_species_duplicate",
    "p15": "decompression_bomb",
    "p16": "missing",
}


def test_drops_every_kind_with_its_reason(tmp_path: Path, messy: list[dict[str, str]]) -> None:
    result = verify_photos(messy, SPECIES, CFG, tmp_path / "clean")
    accounted(result, messy)
    assert {r["photo_id"]: r["reason"] for r in result.dropped} == EXPECTED
    assert [r["photo_id"] for r in result.kept] == ["p01", "p07", "p09", "p11", "p13", "p17"]
    detail = {r["photo_id"]: r["detail"] for r in result.dropped}
    assert detail["p03"] == "zero-byte file"
    assert "truncated" in detail["p02"]
    assert detail["p06"] == "duplicate of p01"
    assert detail["p08"] == "duplicate of p07"
    assert detail["p10"].startswith("near duplicate of p09")

    m = result.metrics
    assert (m["seen"], m["kept"], m["dropped"]) == (17, 6, 11)
    assert m["dropped_by_reason"]["unreadable"] == 3
    assert sum(m["dropped_by_reason"].values()) == m["dropped"]
    assert m["per_species"][BUNG] | {"dropped_by_reason": None} == {
        "seen": 4,
        "kept": 2,
        "dropped": 2,
        "dropped_by_reason": None,
    }
    pairs = {(c["kept"], c["dropped"]): c for c in m["label_conflicts"]["pairs"]}
    assert m["label_conflicts"]["count"] == 2
    assert (
        pairs["p11", "p12"]["kept_taxon"] == NAJA and pairs["p11", "p12"]["dropped_taxon"] == BUNG
    )
    assert pairs["p13", "p14"]["distance"] == 0

    # Only kept photos have clean copies, each at its manifest path.
    files = sorted(p.name for p in (tmp_path / "clean" / "images").rglob("*.jpg"))
    assert files == sorted(f"{r['photo_id']}.jpg" for r in result.kept)
    clean = next(r for r in result.kept if r["photo_id"] == "p17")
    assert clean["path"].endswith("images/bungarus_fasciatus/p17.jpg")
    assert clean["raw_path"].endswith("p17.jpg") and clean["raw_sha256"] == "raw-p17"
    assert set(clean) == set(CLEAN_COLUMNS)


def test_result_does_not_depend_on_row_order_or_workers(
    tmp_path: Path, messy: list[dict[str, str]]
) -> None:
    first = verify_photos(messy, SPECIES, CFG, tmp_path / "a")
    shuffled = random.Random(0).sample(messy, len(messy))
    cfg = VerifyConfig(**(vars(CFG) | {"workers": 2}))
    second = verify_photos(shuffled, SPECIES, cfg, tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "path"} for r in rows]  # noqa: E731
    assert strip(first.kept) == strip(second.kept)
    assert first.dropped == second.dropped
    assert first.metrics == second.metrics


def test_tiny_max_pixels_rejects_before_decoding(tmp_path: Path) -> None:
    path = save(photo(1), tmp_path / "a.jpg")
    cfg = VerifyConfig(max_pixels=5_000)
    result = verify_photos([row("p1", path)], SPECIES, cfg, tmp_path / "clean")
    assert [(r["reason"], "over max_pixels 5000" in r["detail"]) for r in result.dropped] == [
        ("decompression_bomb", True)
    ]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (80, 80), (220, 30, 30)).convert("CMYK"), tmp_path / "c.jpg")
    out = np.asarray(verify_one(tmp_path, path), dtype=int)
    assert np.abs(out - [220, 30, 30]).max() <= 6


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 128 * 64).round().astype(np.uint16).reshape(64, 128)
    path = save(Image.fromarray(ramp), tmp_path / "g16.png")
    with Image.open(path) as im:
        assert im.mode == "I;16"
    out = np.asarray(verify_one(tmp_path, path), dtype=int)
    assert out.min() <= 3 and out.max() >= 252
    assert abs(out.mean() - 127.5) < 3  # clipping at 255 would make the mean ~254
    assert (out >= 250).mean() < 0.05


def test_palette_with_transparency_is_composited_on_white(tmp_path: Path) -> None:
    im = Image.new("P", (100, 80), 0)
    im.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)  # index 0 black (transparent), 1 red
    im.paste(1, (50, 0, 100, 80))
    path = save(im, tmp_path / "p.png", transparency=0)
    out = np.asarray(verify_one(tmp_path, path), dtype=int)
    assert np.abs(out[40, 10] - [255, 255, 255]).max() <= 3  # transparent -> white, not black
    assert np.abs(out[40, 90] - [200, 0, 0]).max() <= 6


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((80, 100, 4), np.uint8)  # fully transparent black...
    rgba[:, 50:] = (0, 0, 200, 255)  # ...beside opaque blue
    path = save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")
    out = np.asarray(verify_one(tmp_path, path), dtype=int)
    assert np.abs(out[40, 10] - [255, 255, 255]).max() <= 3
    assert np.abs(out[40, 90] - [0, 0, 200]).max() <= 6


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_becomes_rgb(tmp_path: Path, mode: str) -> None:
    path = save(photo(3).convert(mode), tmp_path / "g.png")
    out = np.asarray(verify_one(tmp_path, path), dtype=int)
    assert out.shape == (120, 160, 3)
    assert np.abs(out[..., 0] - out[..., 1]).max() <= 2


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((80, 160, 3), np.uint8)  # (H, W, C): wide
    stored[:] = (0, 0, 255)
    stored[:40, :80] = (255, 0, 0)  # stored top-left quadrant red
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = save(Image.fromarray(stored), tmp_path / "r.jpg", exif=exif, quality=95)
    out = np.asarray(verify_one(tmp_path, path), dtype=int)
    assert out.shape == (160, 80, 3)  # dimensions swapped: tall
    expected = np.rot90(stored, k=-1).astype(int)  # clockwise: top-left -> top-right
    assert np.abs(out - expected).mean() < 4
    assert out[20, 60, 0] > 200 and out[20, 20, 2] > 200


def test_resize_only_downsizes(tmp_path: Path) -> None:
    cfg = VerifyConfig(resize_shorter=100, min_side=64)
    big = save(photo(1, (600, 400)), tmp_path / "big.jpg")
    assert verify_one(tmp_path, big, cfg).size == (150, 100)
    tall = save(photo(2, (300, 900)), tmp_path / "tall.jpg")
    assert verify_one(tmp_path, tall, cfg).size == (100, 300)
    small = save(photo(3, (90, 70)), tmp_path / "small.jpg")
    assert verify_one(tmp_path, small, cfg).size == (90, 70)


def test_to_rgb_wide_int_modes() -> None:
    eight_bit_in_i = Image.fromarray(np.full((4, 4), 200, np.int32), "I")
    assert to_rgb(eight_bit_in_i).getpixel((0, 0)) == (200, 200, 200)
    sixteen_in_i = Image.fromarray(np.full((4, 4), 65535, np.int32), "I")
    assert to_rgb(sixteen_in_i).getpixel((0, 0)) == (255, 255, 255)
    unit_float = Image.fromarray(np.full((4, 4), 0.5, np.float32), "F")
    assert to_rgb(unit_float).getpixel((0, 0)) == (128, 128, 128)


def test_run_writes_clean_manifest(tmp_path: Path, messy: list[dict[str, str]]) -> None:
    raw = tmp_path / "raw"
    with open(raw / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(messy)
    result = run(raw, tmp_path / "clean", SPECIES, CFG)
    with open(tmp_path / "clean" / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CLEAN_COLUMNS
        rows = list(reader)
    assert [r["photo_id"] for r in rows] == [r["photo_id"] for r in result.kept]
    for r in rows:
        with Image.open(r["path"]) as im:
            assert (str(im.width), str(im.height)) == (r["width"], r["height"])

    run(raw, tmp_path / "clean", SPECIES, CFG)  # a rerun replaces its own output


def test_bad_raw_manifest_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        run(tmp_path / "nowhere", tmp_path / "clean", SPECIES, CFG)
    (tmp_path / "manifest.csv").write_text("photo_id,path\np1,a.jpg\n")
    with pytest.raises(UserError, match="lacks column"):
        run(tmp_path, tmp_path / "clean", SPECIES, CFG)
    with pytest.raises(UserError, match="not in the species file"):
        verify_photos([row("p1", "a.jpg", "Naja naja")], SPECIES, CFG, tmp_path / "clean")
    with pytest.raises(UserError, match="appears twice"):
        verify_photos([row("p1", "a.jpg"), row("p1", "b.jpg")], SPECIES, CFG, tmp_path / "clean")


def test_refuses_to_clear_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="did not write"):
        verify_photos([], SPECIES, CFG, tmp_path / "clean")
    assert (tmp_path / "clean" / "precious.txt").exists()


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"min_side": 0}, "verify.min_side"),
        ({"near_dup_distance": -1}, "verify.near_dup_distance"),
        ({"jpeg_quality": 101}, "verify.jpeg_quality"),
        ({"resize_shorter": "big"}, "verify.resize_shorter"),
        ({"max_pixel": 10}, "verify.max_pixel"),
    ],
)
def test_bad_params_name_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ParamsError, match=key):
        section({"verify": raw}, "verify", VerifyConfig)


def test_near_duplicate_threshold_is_inclusive_and_can_be_zero(tmp_path: Path) -> None:
    a = save(photo(9), tmp_path / "a.jpg", quality=95)
    buf = io.BytesIO()
    ImageEnhance.Brightness(photo(9)).enhance(1.08).save(buf, "JPEG", quality=70)
    b = tmp_path / "b.jpg"
    b.write_bytes(buf.getvalue())
    rows = [row("a", a), row("b", b)]
    loose = verify_photos(rows, SPECIES, CFG, tmp_path / "c1")
    assert [r["reason"] for r in loose.dropped] == ["near_duplicate"]
    strict = verify_photos(rows, SPECIES, VerifyConfig(near_dup_distance=0), tmp_path / "c2")
    dist = int(loose.dropped[0]["detail"].rsplit(" ", 1)[1])
    assert len(strict.dropped) == (1 if dist == 0 else 0)
