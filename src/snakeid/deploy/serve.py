"""HTTP service: one `Predictor` (one ONNX Runtime session) shared by every request.

`create_app` builds the FastAPI app; `snakeid serve` runs it under uvicorn. Routes:
`POST /predict` (multipart `file`), `GET /species`, `GET /health`, `GET /` (a self-contained
page) and the API docs `/docs` (Swagger UI). Bad uploads get a 4xx with a message a person can
act on; the process never has to decode more bytes or pixels than the configured limits.
Nothing is loaded from another host: the Swagger UI's JavaScript and CSS come from the pinned
`fastapi-offline` package (FastAPI's own `/docs` fetches them from a CDN, so is blank offline).
ReDoc is off: its bundle always fetches its logo from its CDN.
"""

from __future__ import annotations

import html
import logging
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from snakeid import __version__
from snakeid.deploy.predict import SYNTHETIC_WARNING, Predictor
from snakeid.errors import InvalidValue
from snakeid.images import DEFAULT_MAX_PIXELS, set_pixel_limit
from snakeid.model.decision import HEADLINES
from snakeid.model.preprocess import (
    CorruptImage,
    ImageTooLarge,
    NotAnImage,
    UnreadableImage,
    load_image,
)

_logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# Room for the multipart boundary and part headers around the file itself.
MULTIPART_OVERHEAD = 64 * 1024
# Where the page's banner goes; `render_page` refuses a page without it, so it cannot go missing.
BANNER_MARKER = "<!-- synthetic-banner -->"


class PredictionOut(BaseModel):
    species: str
    common_name: str
    venomous: bool
    probability: float


class PredictOut(BaseModel):
    verdict: str  # venomous | possibly_venomous | harmless (snakeid.model.decision)
    headline: str  # what a person is told first, for the verdict
    reason: str  # why, in plain words
    predictions: list[PredictionOut]  # the closest species, most probable first
    low_confidence: bool
    possibly_venomous: bool  # verdict != "harmless"
    venomous_probability: float
    unknown_score: float  # higher = less likely one of the model's species
    unknown_margin: float  # unknown_score minus the model's threshold: above 0, unknown
    unknown: bool  # not one of the species this model knows
    message: str | None  # "Not one of the N species this model knows" when unknown
    model: dict[str, Any]


class SpeciesOut(BaseModel):
    species: str
    common_name: str
    venomous: bool


class SpeciesListOut(BaseModel):
    count: int
    region: str | None  # where the species live, from the species file (null: not stated)
    scope: str  # "knows N snake species of <region>; ..." in plain words
    species: list[SpeciesOut]


class HealthOut(BaseModel):
    status: str
    model_loaded: bool
    model_sha256: str
    synthetic: bool  # trained on the demo's generated photos: not a model of real snakes
    data_source: str | None  # model_meta.json's data.source
    model: dict[str, Any]


class ErrorOut(BaseModel):
    detail: str


class BodyLimit:
    """ASGI middleware: refuse a request body over `limit` bytes on one path, with a 413.

    Content-Length is checked before anything is read; a body without one (chunked) is counted as
    it streams in, so an oversize upload is never stored whole, in memory or on disk.
    """

    def __init__(self, app: ASGIApp, *, path: str, limit: int, message: str) -> None:
        self.app, self.path, self.limit, self.message = app, path, limit, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            await JSONResponse({"detail": self.message}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # FastAPI re-raises HTTPExceptions from body parsing, so this becomes a 413.
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, counting_receive, send)


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


def render_page(template: str, *, synthetic: bool) -> str:
    """The page, with a plain banner at the top when the model is synthetic.

    Written into the HTML by the server rather than by the page's script, so the warning shows
    even before (or without) any request the script makes.
    """
    if template.count(BANNER_MARKER) != 1:
        raise ValueError(f"static/index.html must contain {BANNER_MARKER!r} exactly once")
    banner = ""
    if synthetic:
        banner = (
            '<p id="synthetic-banner" class="synthetic-banner" role="alert">'
            f"<strong>Warning:</strong> {html.escape(SYNTHETIC_WARNING)}.</p>"
        )
    return template.replace(BANNER_MARKER, banner)


def create_app(
    model_path: str | Path,
    meta_path: str | Path | None = None,
    *,
    top_k: int = 3,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    low_confidence: float | None = None,
    venomous_threshold: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    threads: int = 0,
) -> FastAPI:
    """Load the model once and return the app that serves it."""
    if max_upload_bytes < 1:
        raise InvalidValue(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    if max_pixels < 1:
        raise InvalidValue(f"max_pixels must be positive, got {max_pixels}")
    predictor = Predictor(
        model_path,
        meta_path,
        threads=threads,
        low_confidence=low_confidence,
        venomous_threshold=venomous_threshold,
    )
    predictor.check_top_k(top_k)
    set_pixel_limit(max_pixels)
    template = (
        resources.files("snakeid.deploy").joinpath("static/index.html").read_text(encoding="utf-8")
    )
    page = render_page(template, synthetic=predictor.meta.synthetic)
    too_large = f"upload is larger than the {_megabytes(max_upload_bytes)} limit"

    # FastAPIOffline is FastAPI with /docs pointed at its own copy of the Swagger UI assets
    # (mounted under /static-offline-docs) instead of a CDN.
    app = FastAPIOffline(
        docs_url="/docs",
        redoc_url=None,
        title="snakeid",
        version=__version__,
        description=(
            "Snake species from a photo. A machine guess, not an identification: "
            "never handle a snake, and treat any bite as an emergency."
        ),
    )
    app.state.predictor = predictor
    app.add_middleware(
        BodyLimit, path="/predict", limit=max_upload_bytes + MULTIPART_OVERHEAD, message=too_large
    )
    _add_info_routes(app, predictor, page)
    _add_predict_route(app, predictor, top_k, max_upload_bytes, max_pixels)
    return app


def _add_info_routes(app: FastAPI, predictor: Predictor, page: str) -> None:
    """`/` (the page), `/health` and `/species`."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", response_model=HealthOut)
    def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model_loaded": True,
            "model_sha256": predictor.model_sha256,
            "synthetic": predictor.meta.synthetic,
            "data_source": predictor.meta.data_source,
            "model": predictor.info(),
        }

    @app.get("/species", response_model=SpeciesListOut)
    def species() -> dict[str, Any]:
        items = [
            {"species": s.name, "common_name": s.common, "venomous": s.venomous}
            for s in predictor.species
        ]
        return {
            "count": len(items),
            "region": predictor.meta.region,
            "scope": predictor.scope,
            "species": items,
        }


PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorOut, "description": "Upload or image too large"},
    415: {"model": ErrorOut, "description": "Not an image"},
    422: {"description": "Image could not be decoded, or no file"},
}


def _add_predict_route(
    app: FastAPI, predictor: Predictor, top_k: int, max_upload_bytes: int, max_pixels: int
) -> None:
    """`POST /predict`. A sync endpoint: FastAPI runs it in its threadpool, so decoding and the
    ONNX call never block the event loop. `BodyLimit` has already refused a body much over the
    limit; this checks the file part itself exactly."""
    too_large = f"upload is larger than the {_megabytes(max_upload_bytes)} limit"

    @app.post(
        "/predict",
        response_model=PredictOut,
        responses=PREDICT_ERRORS,
        form_limits={"max_files": 1, "max_fields": 8},
    )
    def predict(
        file: Annotated[UploadFile, File(description="A photo (JPEG, PNG, WebP, ...)")],
    ) -> dict[str, Any]:
        data = file.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, too_large)
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        try:
            image = load_image(data, max_pixels=max_pixels)
        except ImageTooLarge as e:
            raise HTTPException(413, str(e)) from e
        except NotAnImage as e:
            raise HTTPException(415, str(e)) from e
        except (CorruptImage, UnreadableImage) as e:
            raise HTTPException(422, str(e)) from e
        result = predictor.predict_images([image], top_k)[0]
        _logger.info(
            "%s -> %s %.3f",
            file.filename,
            result.predictions[0].species,
            result.predictions[0].probability,
        )
        message = predictor.unknown_message if result.unknown else None
        return {
            **result.to_dict(),
            "headline": HEADLINES[result.verdict],
            "message": message,
            "model": predictor.info(),
        }
