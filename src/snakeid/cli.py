"""`snakeid predict` and `snakeid serve`: the exported model, used without torch.

    snakeid predict PATH... [--model models/model_int8.onnx] [--top-k 3] [--format table|json|csv]
    snakeid serve [--model models/model_int8.onnx] [--host 127.0.0.1] [--port 8000]

Heavy imports (onnxruntime, fastapi, uvicorn) happen inside the subcommands so `--help` is quick.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from snakeid import __version__
from snakeid.predict import DEFAULT_MODEL, ImageResult, Predictor
from snakeid.preprocess import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    UnreadableImage,
    load_image,
    preprocess,
    set_pixel_limit,
)
from snakeid.utils import setup_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snakeid", description="Snake species from photos.")
    parser.add_argument("--version", action="version", version=f"snakeid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", type=Path, default=DEFAULT_MODEL, help="ONNX model (default: %(default)s)"
        )
        p.add_argument(
            "--meta",
            type=Path,
            default=None,
            help="metadata (default: model_meta.json beside the model)",
        )
        p.add_argument(
            "--top-k", type=int, default=3, help="predictions per image (default: %(default)s)"
        )
        p.add_argument(
            "--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)"
        )
        p.add_argument(
            "--max-pixels",
            type=int,
            default=DEFAULT_MAX_PIXELS,
            help="refuse bigger images (default: %(default)s)",
        )
        p.add_argument(
            "--low-confidence",
            type=float,
            default=None,
            help="flag a top-1 probability under this (default: model metadata, else 0.5)",
        )
        p.add_argument(
            "--venomous-threshold",
            type=float,
            default=None,
            help="flag possibly venomous when the venomous species' summed probability reaches "
            "this (default: model metadata, else 0.5)",
        )

    p = sub.add_parser("predict", help="classify image files or folders (recursive)")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    model_args(p)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_predict)

    s = sub.add_parser("serve", help="run the HTTP service and web page")
    model_args(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest upload (default: %(default)s)"
    )
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    s.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def _fail(message: str) -> int:
    print(f"snakeid: error: {message}", file=sys.stderr)
    return 2


def _missing_model(path: Path) -> int:
    return _fail(f"model not found: {path} — run `dvc repro` first to build it, or pass --model")


def iter_image_paths(paths: Sequence[Path]) -> list[Path]:
    """Files as given; folders expanded recursively to their images, in sorted order."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            found.append(path)  # tried whatever its name; a missing file is reported as a row
            continue
        images = (
            p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        found.extend(sorted(images, key=Path.as_posix))
    return found


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cmd_predict(args: argparse.Namespace) -> int:
    setup_logging(logging.WARNING)  # stdout is for results
    if not args.model.is_file():
        return _missing_model(args.model)
    set_pixel_limit(args.max_pixels)
    try:
        predictor = Predictor(
            args.model,
            args.meta,
            threads=args.threads,
            batch_size=args.batch_size,
            low_confidence=args.low_confidence,
            venomous_threshold=args.venomous_threshold,
        )
        top_k = predictor.check_top_k(args.top_k)
    except ValueError as e:  # bad metadata or flags: one line, no traceback
        return _fail(str(e))
    paths = iter_image_paths(args.paths)
    writer = {"table": TableWriter, "json": JsonWriter, "csv": CsvWriter}[args.format](
        sys.stdout, predictor, paths
    )
    spec = predictor.meta.preprocess
    n_ok = n_bad = 0
    # Chunk by batch size: one ONNX call per chunk, results printed as each chunk finishes, and
    # only preprocessed (small) arrays are held, never a batch of full-size photos.
    for chunk in _chunks(paths, predictor.batch_size):
        arrays, errors = {}, {}
        for path in chunk:
            try:
                arrays[path] = preprocess(load_image(path, max_pixels=args.max_pixels), spec)
            except UnreadableImage as e:
                errors[path] = str(e)
        predicted = predictor.predict_arrays(list(arrays.values()), top_k)
        results = dict(zip(arrays, predicted, strict=True))
        for path in chunk:
            if path in results:
                writer.result(path, results[path])
            else:
                writer.error(path, errors[path])
        sys.stdout.flush()
        n_ok, n_bad = n_ok + len(results), n_bad + len(errors)
    print(f"snakeid: {n_ok} image(s) classified, {n_bad} unreadable", file=sys.stderr)
    return 0 if n_ok else 1


class TableWriter:
    """Aligned columns; widths are known up front (all paths and species), so rows can stream."""

    def __init__(self, out: TextIO, predictor: Predictor, paths: Sequence[Path]) -> None:
        self.out = out
        self.pw = max([len("PATH"), *(len(str(p)) for p in paths)])
        self.sw = max(len(s.name) for s in predictor.species)
        self.cw = max(len("COMMON NAME"), *(len(s.common) for s in predictor.species))
        self._line("PATH", "#", "SPECIES", "COMMON NAME", "PROB", "VENOMOUS")

    def _line(self, path: str, rank: str, species: str, common: str, prob: str, venom: str) -> None:
        cells = f"{path:<{self.pw}}  {rank:>2}  {species:<{self.sw}}  {common:<{self.cw}}"
        print(f"{cells}  {prob:>6}  {venom}".rstrip(), file=self.out)

    def _note(self, text: str) -> None:
        print(f"{'':<{self.pw}}  {'':>2}  ! {text}", file=self.out)

    def result(self, path: Path, r: ImageResult) -> None:
        for rank, p in enumerate(r.predictions, 1):
            self._line(
                str(path) if rank == 1 else "",
                str(rank),
                p.species,
                p.common_name,
                f"{100 * p.probability:.1f}%",
                "VENOMOUS" if p.venomous else "",
            )
        if r.possibly_venomous:
            self._note(
                f"possibly venomous: {100 * r.venomous_probability:.0f}% on venomous species"
            )
        if r.low_confidence:
            self._note("low confidence: not sure — treat it as venomous and keep away")

    def error(self, path: Path, message: str) -> None:
        print(f"{str(path):<{self.pw}}  {'-':>2}  error: {message}", file=self.out)


class JsonWriter:
    """JSON lines: one object per image, with `error` instead of predictions when unreadable."""

    def __init__(self, out: TextIO, predictor: Predictor, paths: Sequence[Path]) -> None:
        self.out = out

    def result(self, path: Path, r: ImageResult) -> None:
        print(json.dumps({"path": str(path), **r.to_dict()}), file=self.out)

    def error(self, path: Path, message: str) -> None:
        print(json.dumps({"path": str(path), "error": message}), file=self.out)


class CsvWriter:
    """One row per (image, rank); an unreadable image is one row with only `path` and `error`."""

    HEADER = ("path", "rank", "species", "common_name", "venomous", "probability", "error")

    def __init__(self, out: TextIO, predictor: Predictor, paths: Sequence[Path]) -> None:
        self.writer = csv.writer(out, lineterminator="\n")
        self.writer.writerow(self.HEADER)

    def result(self, path: Path, r: ImageResult) -> None:
        for rank, p in enumerate(r.predictions, 1):
            venomous = "true" if p.venomous else "false"
            self.writer.writerow(
                [path, rank, p.species, p.common_name, venomous, f"{p.probability:.6f}", ""]
            )

    def error(self, path: Path, message: str) -> None:
        self.writer.writerow([path, "", "", "", "", "", message])


def cmd_serve(args: argparse.Namespace) -> int:
    setup_logging(getattr(logging, args.log_level.upper()))
    if not args.model.is_file():
        return _missing_model(args.model)
    import uvicorn

    from snakeid.serve import create_app

    try:
        app = create_app(
            args.model,
            args.meta,
            top_k=args.top_k,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            low_confidence=args.low_confidence,
            venomous_threshold=args.venomous_threshold,
            max_pixels=args.max_pixels,
            threads=args.threads,
        )
    except ValueError as e:
        return _fail(str(e))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
