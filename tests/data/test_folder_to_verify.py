"""Issue check: a user's folder full of awkward files goes through download → verify → split
as the stage scripts run under DVC, and every file is accounted for."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from snakeid.data.manifest import read_manifest

STAGES = Path(__file__).resolve().parents[2] / "stages"


def _photo(seed: int, size=(320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    a[size[1] // 3 :, : size[0] // 2] = rng.integers(0, 255, 3, dtype=np.uint8)  # some structure
    return Image.fromarray(a)


def _awkward_folder(root: Path) -> dict[str, int]:
    """Two species folders holding every kind of file `verify` must handle."""
    cobra, krait = root / "Naja_kaouthia", root / "bungarus FASCIATUS"
    cobra.mkdir(parents=True)
    krait.mkdir(parents=True)
    for i in range(4):
        _photo(i).save(cobra / f"ok{i}.jpg", quality=92)
        _photo(100 + i).save(krait / f"ok{i}.png")
    buf = io.BytesIO()
    _photo(8).save(buf, "JPEG")
    (cobra / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (cobra / "zero.jpg").write_bytes(b"")
    (cobra / "not_an_image.jpg").write_text("<html>404</html>")
    _photo(9).convert("CMYK").save(cobra / "cmyk.jpg")
    sixteen = (np.linspace(0, 65535, 300 * 200).reshape(200, 300)).astype(np.uint16)
    Image.fromarray(sixteen).save(krait / "sixteen_bit.png")  # mode I;16
    pal = _photo(10).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    pal.save(krait / "palette_alpha.png")
    rotated = _photo(11, (400, 300))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(cobra / "exif_rotated.jpg", exif=exif)
    (krait / "copy_of_ok0.png").write_bytes((krait / "ok0.png").read_bytes())
    (cobra / "notes.txt").write_text("not a photo")  # skipped by download (not an image name)
    return {"image_named": 4 + 4 + 3 + 1 + 2 + 1 + 1, "other": 1}


def _run(cwd: Path, *args: str) -> None:
    p = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr


def test_every_awkward_file_is_accounted_for(tmp_path):
    counts = _awkward_folder(tmp_path / "photos")
    species = [
        {"name": "Naja kaouthia", "common": "Monocled Cobra", "venomous": True},
        {"name": "Bungarus fasciatus", "common": "Banded Krait", "venomous": True},
    ]
    (tmp_path / "taxa.yaml").write_text(yaml.safe_dump(species))
    params = {
        "base": {"species_file": "taxa.yaml"},
        "download": {"source": "folder", "folder": "photos"},
        "verify": {"min_side": 32, "workers": 1},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _run(tmp_path, str(STAGES / "download.py"), "--out", "data/raw")
    _run(tmp_path, str(STAGES / "verify.py"), "--raw", "data/raw", "--out", "data/clean",
         "--metrics", "verify.json", "--report", "verify_report.json",
         "--dropped", "dropped.csv")  # fmt: skip
    _run(tmp_path, str(STAGES / "split.py"), "--clean", "data/clean", "--out", "data/split",
         "--metrics", "split.json", "--report", "split_report.json")  # fmt: skip

    raw = read_manifest(tmp_path / "data/raw/manifest.csv")
    skipped = read_manifest(tmp_path / "data/raw/skipped.csv")
    assert len(raw) == counts["image_named"] and len(skipped) == counts["other"]
    report = json.loads((tmp_path / "verify_report.json").read_text())
    dropped = read_manifest(tmp_path / "dropped.csv")
    kept = read_manifest(tmp_path / "data/clean/manifest.csv")
    assert report["seen"] == len(raw) == report["kept"] + report["dropped"]
    assert {r["photo_id"] for r in kept} | {r["photo_id"] for r in dropped} == {
        r["photo_id"] for r in raw
    }
    name = {r["photo_id"]: Path(r["url"]).name for r in raw}  # url = the user's file path
    reason = {name[r["photo_id"]]: r["reason"] for r in dropped}
    # which of the two identical files is kept is fixed (first by photo id); the other goes
    copies = {"ok0.png", "copy_of_ok0.png"} & set(reason)
    assert len(copies) == 1 and reason[copies.pop()] == "duplicate"
    assert {reason[n] for n in ("truncated.jpg", "zero.jpg", "not_an_image.jpg")} == {"unreadable"}
    assert len(reason) == 4
    # the awkward but valid files were kept and normalised to RGB JPEGs
    kept_by_name = {name[k["photo_id"]]: k for k in kept}
    assert {"cmyk.jpg", "sixteen_bit.png", "palette_alpha.png", "exif_rotated.jpg"} <= set(
        kept_by_name
    )
    for k in kept:
        with Image.open(tmp_path / k["path"]) as im:
            assert im.mode == "RGB"
    rotated = kept_by_name["exif_rotated.jpg"]
    assert int(rotated["height"]) > int(rotated["width"])  # orientation 6 applied: portrait
    splits = {s: read_manifest(tmp_path / f"data/split/{s}.csv") for s in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == len(kept)
