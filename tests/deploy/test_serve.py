"""API tests for `snakeid.deploy.serve`: every endpoint, and every kind of bad upload."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from snakeid.deploy.predict import SYNTHETIC_WARNING
from snakeid.deploy.serve import BANNER_MARKER, create_app, render_page
from tiny_model import SPECIES, build_tiny_model, demo_photo, pillow_limits_restored

MAX_UPLOAD = 200_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module", autouse=True)
def _pillow_limits() -> Iterator[None]:
    with pillow_limits_restored():
        yield


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = build_tiny_model(tmp_path_factory.mktemp("model"))
    return path


@pytest.fixture(scope="module")
def client(model: Path) -> TestClient:
    app = create_app(model, top_k=3, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS)
    return TestClient(app)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return demo_photo(tmp_path_factory.mktemp("photos") / "snake.jpg").read_bytes()


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def upload(client: TestClient, data: bytes, name: str = "snake.jpg", ctype: str = "image/jpeg"):
    return client.post("/predict", files={"file": (name, data, ctype)})


def assert_still_up(client: TestClient) -> None:
    assert client.get("/health").json()["model_loaded"] is True


def test_predict_returns_top_k_with_the_documented_keys(client: TestClient, photo: bytes) -> None:
    r = upload(client, photo)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "verdict",
        "headline",
        "reason",
        "predictions",
        "low_confidence",
        "possibly_venomous",
        "venomous_probability",
        "unknown_score",
        "unknown_margin",
        "unknown",
        "message",
        "model",
    }
    preds = body["predictions"]
    assert len(preds) == 3
    assert all(set(p) == {"species", "common_name", "venomous", "probability"} for p in preds)
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
    # The tiny model favours species 0 (venomous) for any photo.
    assert preds[0]["species"] == SPECIES[0]["name"] and preds[0]["venomous"] is True
    assert body["possibly_venomous"] is True and body["low_confidence"] is False
    assert body["verdict"] == "venomous"
    assert body["model"]["sha256"] == client.get("/health").json()["model_sha256"]
    threshold = body["model"]["unknown_threshold"]
    assert body["unknown"] is (body["unknown_score"] > threshold)
    assert body["message"] is None if not body["unknown"] else body["message"].startswith("Not")


def test_a_species_the_model_does_not_know_is_said_so(tmp_path: Path, photo: bytes) -> None:
    # a threshold under every score: every photo is flagged unknown
    model, _ = build_tiny_model(tmp_path, favour=1, decision={"unknown_threshold": -1e9})
    body = upload(TestClient(create_app(model)), photo).json()
    assert body["unknown"] is True
    assert body["message"] == "Not one of the 4 species this model knows"
    assert body["predictions"][0]["species"] == SPECIES[1]["name"]  # the closest, still listed
    assert body["predictions"][0]["venomous"] is False
    assert body["possibly_venomous"] is True  # an unknown snake may be venomous


def test_low_confidence_threshold_comes_from_the_flag(model: Path, photo: bytes) -> None:
    strict = TestClient(create_app(model, low_confidence=0.99, venomous_threshold=0.999))
    body = upload(strict, photo).json()
    assert body["low_confidence"] is True and body["venomous_probability"] < 0.999
    # a venomous top-1 is the answer however unsure; never harmless
    assert body["verdict"] == "venomous" and body["possibly_venomous"] is True
    assert body["reason"].endswith("a venomous species, but the model is not sure of the species")
    assert body["model"]["low_confidence_threshold"] == 0.99


def test_thresholds_default_to_the_model_metadata(tmp_path: Path, photo: bytes) -> None:
    model, _ = build_tiny_model(tmp_path, decision={"low_confidence_threshold": 0.95})
    body = upload(TestClient(create_app(model)), photo).json()
    assert body["low_confidence"] is True
    assert body["model"]["low_confidence_threshold"] == 0.95


def test_top_k_is_configurable_and_checked(model: Path, photo: bytes) -> None:
    assert len(upload(TestClient(create_app(model, top_k=1)), photo).json()["predictions"]) == 1
    with pytest.raises(ValueError, match="top-k must be between 1 and 4"):
        create_app(model, top_k=5)


def test_species_lists_the_model_classes_in_order(client: TestClient) -> None:
    body = client.get("/species").json()
    assert body["count"] == len(SPECIES)
    assert [s["species"] for s in body["species"]] == [s["name"] for s in SPECIES]
    assert [s["venomous"] for s in body["species"]] == [s["venomous"] for s in SPECIES]


def test_health_reports_model_and_hash(client: TestClient, model: Path) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model_loaded"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", body["model_sha256"])
    assert body["model"]["file"] == model.name and body["model"]["n_species"] == len(SPECIES)
    # The tiny model's meta has no data block: not known to be synthetic, source unknown.
    assert body["synthetic"] is False and body["data_source"] is None


@pytest.mark.parametrize(
    ("data_source", "synthetic"), [("demo-synthetic", True), ("folder", False)]
)
def test_synthetic_model_is_announced(
    data_source: str, synthetic: bool, tmp_path: Path, photo: bytes
) -> None:
    model, _ = build_tiny_model(tmp_path, data_source=data_source)
    client = TestClient(create_app(model))
    health = client.get("/health").json()
    assert health["synthetic"] is synthetic and health["data_source"] == data_source
    assert health["model"]["synthetic"] is synthetic
    assert upload(client, photo).json()["model"]["synthetic"] is synthetic
    page = client.get("/").text
    assert BANNER_MARKER not in page
    banner = re.search(r'<p id="synthetic-banner"[^>]*>(.*?)</p>', page, re.S)
    assert (banner is not None) is synthetic
    if banner:
        text = re.sub(r"<[^>]+>", "", banner.group(1))
        assert text == f"Warning: {SYNTHETIC_WARNING}."
        # At the top of the page, before the upload form.
        assert page.index('id="synthetic-banner"') < page.index('id="drop"')


def test_page_without_the_banner_marker_is_refused() -> None:
    with pytest.raises(ValueError, match="synthetic-banner"):
        render_page("<main><h1>snakeid</h1></main>", synthetic=True)


def test_docs_and_openapi(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/species", "/health"} <= set(paths)
    # The Swagger UI loads its script and style from this server, never from a CDN.
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "cdn" not in r.text.lower() and not re.search(r"(src|href)=[\"']?https?:", r.text)
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text)
    for kind, ctype in (("js", "text/javascript"), ("css", "text/css")):
        (url,) = [a for a in assets if a.endswith(f".{kind}")]
        asset = client.get(url)
        assert asset.status_code == 200 and len(asset.content) > 50_000, url
        assert asset.headers["content-type"].startswith(ctype)
    # ReDoc is off: its bundle fetches its logo from a CDN whatever it is told.
    assert client.get("/redoc").status_code == 404


def test_page_is_self_contained(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    # No external assets: nothing fetched from another origin, no build artefacts.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text)
    assert "@import" not in r.text and "url(http" not in r.text
    for element_id in ("file", "drop", "results", "alerts", "species-list"):
        assert f'id="{element_id}"' in r.text


def test_oversize_upload_is_413(client: TestClient) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    data = png_bytes(noise)
    assert len(data) > MAX_UPLOAD
    r = upload(client, data, "big.png", "image/png")
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]
    assert_still_up(client)


def test_oversize_body_without_content_length_is_413(client: TestClient) -> None:
    # A chunked upload has no Content-Length to check: the limit must count bytes as they arrive.
    boundary = "snakeidboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body():
        yield head
        for _ in range(40):
            yield b"\xff" * 10_000
        yield f"\r\n--{boundary}--\r\n".encode()

    r = client.post(
        "/predict",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]
    assert_still_up(client)


def test_not_an_image_is_415(client: TestClient) -> None:
    r = upload(client, b"%PDF-1.7 definitely not a photo", "doc.pdf", "application/pdf")
    assert r.status_code == 415
    assert "not a recognised image" in r.json()["detail"]
    # The declared type is not trusted either way.
    assert upload(client, b"hello", "fake.jpg", "image/jpeg").status_code == 415
    assert_still_up(client)


def test_truncated_image_is_422(client: TestClient, photo: bytes) -> None:
    r = upload(client, photo[: len(photo) // 3])
    assert r.status_code == 422
    assert "could not be decoded" in r.json()["detail"]
    assert_still_up(client)


def test_empty_upload_and_missing_field_are_422(client: TestClient) -> None:
    r = upload(client, b"")
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    assert client.post("/predict", data={"other": "x"}).status_code == 422
    assert_still_up(client)


def test_decompression_bomb_is_413(client: TestClient) -> None:
    # 2000 x 2000 of zeros compresses to a few KB but is 4x the pixel limit.
    data = png_bytes(np.zeros((2000, 2000), dtype=np.uint8))
    assert len(data) < MAX_UPLOAD
    r = upload(client, data, "bomb.png", "image/png")
    assert r.status_code == 413
    assert "pixels" in r.json()["detail"]
    assert_still_up(client)


def test_png_and_grayscale_are_accepted(client: TestClient) -> None:
    gray = np.random.default_rng(1).integers(0, 256, (120, 90), dtype=np.uint8)
    r = upload(client, png_bytes(gray), "gray.png", "image/png")
    assert r.status_code == 200, r.text
