"""`snakeid predict` and `snakeid serve`: the exported model, used without torch.

    snakeid predict PATH... [--model MODEL] [--top-k 3] [--format table|json|csv]
    snakeid serve [--model MODEL] [--host 127.0.0.1] [--port 8000]

Heavy imports (onnxruntime, fastapi, uvicorn) happen inside the subcommands so `--help` is quick.
How predict's results look (the `--format` writers, progress and summary) is predict_output.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from snakeid import __version__
from snakeid.contract import DEFAULT_LOW_CONFIDENCE, DEFAULT_VENOMOUS_THRESHOLD
from snakeid.deploy.predict import (
    DEFAULT_MODEL,
    MODEL_ENV,
    SYNTHETIC_WARNING,
    Predictor,
    find_model,
)
from snakeid.deploy.predict_output import BatchProgress, make_writer, report_skipped, summary
from snakeid.errors import InvalidValue, UserError
from snakeid.images import DEFAULT_MAX_PIXELS, set_pixel_limit
from snakeid.model.preprocess import (
    IMAGE_EXTENSIONS,
    UnreadableImage,
    load_image,
    preprocess,
)
from snakeid.utils import setup_logging

# The exit-status contract of `snakeid predict`, shown by `--help` and kept in one place.
EXIT_OK = 0  # every photo classified
EXIT_SOME_FAILED = 1  # some photos could not be read; the others are still written
EXIT_USAGE = 2  # bad option, missing or invalid model, nothing to classify

PREDICT_EPILOG = f"""\
exit status:
  {EXIT_OK}  every photo was classified
  {EXIT_SOME_FAILED}  some photos failed (unreadable, not an image, too large); the
     others are still written, each failure as a row with its error
  {EXIT_USAGE}  usage or model error: a bad option, a missing or invalid model or
     metadata, or a folder with no image files in it (nothing is classified)

verdict: venomous (a venomous species is the answer), possibly_venomous (a
species the model does not know, a model that is not sure, or a venomous
species too likely to rule out) or harmless (confidently one of its harmless
species); reason says why in plain words. possibly_venomous is verdict !=
harmless.

csv: one row per photo: path, verdict, reason, the top-k in columns (species_1,
common_name_1, venomous_1, probability_1, species_2, ...), then
venomous_probability, possibly_venomous, low_confidence, unknown_score,
unknown_margin, unknown and error. --long: one row per (photo, rank) instead,
with the same per-photo columns.

unknown: the photo is not one of the species the model knows: its unknown score
is above the threshold fitted on held-out photos of known species.
unknown_margin is the score minus that threshold (above 0: unknown; the
score's units are the model's own, so compare margins, not raw scores).

files that are not images (by extension) under a folder are listed on stderr
and counted, never silently skipped. Progress goes to stderr (a bar on a
terminal, a line every 10 % for 100 photos or more otherwise), and a summary
of verdicts ends every run.

model: --model, else $SNAKEID_MODEL, else models/model_int8.onnx under the
working directory, else under the project snakeid was installed from."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option shows its default; a help text that already explains it keeps its words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "default:" in action.help:
            return action.help
        return super()._get_help_string(action)


def _model_args(p: argparse.ArgumentParser) -> None:
    """The model and decision options, the same for both subcommands."""
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"ONNX model (default: ${MODEL_ENV}, else {DEFAULT_MODEL} here or in the "
        "project snakeid was installed from)",
    )
    p.add_argument(
        "--meta",
        type=Path,
        default=None,
        help="metadata (default: model_meta.json beside the model)",
    )
    p.add_argument("--top-k", type=int, default=3, help="predictions per image")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads (default: %(default)s, ONNX Runtime's own choice)",
    )
    p.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse bigger images"
    )
    p.add_argument(
        "--low-confidence",
        type=float,
        default=None,
        help="flag a top-1 probability under this (default: model metadata, else "
        f"{DEFAULT_LOW_CONFIDENCE})",
    )
    p.add_argument(
        "--venomous-threshold",
        type=float,
        default=None,
        help="flag possibly venomous when the venomous species' summed probability reaches "
        f"this (default: model metadata, else {DEFAULT_VENOMOUS_THRESHOLD})",
    )


def _predict_args(p: argparse.ArgumentParser) -> None:
    """`snakeid predict`: the photos, the model options, then how results are written."""
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    _model_args(p)
    p.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="table for people; json: one object per line; csv: one row per photo",
    )
    p.add_argument(
        "--long",
        action="store_true",
        help="with --format csv: one row per (photo, rank) instead of one row per photo",
    )
    p.add_argument("--batch-size", type=int, default=16, help="photos per ONNX Runtime call")


def _serve_args(s: argparse.ArgumentParser) -> None:
    """`snakeid serve`: the model options, then where and how the service listens."""
    _model_args(s)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8000, help="port to listen on")
    s.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload, in MB")
    s.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="server log level",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snakeid", description="Snake species from photos.", formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"snakeid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "predict",
        help="classify image files or folders (recursive)",
        description="Classify image files, or every image under folders (recursively).",
        epilog=PREDICT_EPILOG,
        formatter_class=HelpFormatter,
    )
    _predict_args(p)
    p.set_defaults(func=cmd_predict)

    s = sub.add_parser(
        "serve", help="run the HTTP service and web page", formatter_class=HelpFormatter
    )
    _serve_args(s)
    s.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def _fail(message: str) -> int:
    print(f"snakeid: error: {message}", file=sys.stderr)
    return EXIT_USAGE


class NoImagesFound(InvalidValue):
    """A folder given on the command line holds no image file: nothing to classify there."""


def iter_image_paths(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Files as given; folders expanded recursively to their images, in sorted order. Returns
    the photos and the files under the folders that are not images (by extension).

    A folder without any image is an error, not an empty result: it is almost always the wrong
    folder, and an exit status of 0 with no rows would hide that.
    """
    found: list[Path] = []
    skipped: list[Path] = []
    for path in paths:
        if not path.is_dir():
            found.append(path)  # tried whatever its name; a missing file is reported as a row
            continue
        files = sorted((p for p in path.rglob("*") if p.is_file()), key=Path.as_posix)
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        if not images:
            extensions = " ".join(sorted(IMAGE_EXTENSIONS))
            raise NoImagesFound(f"no image files found under {path} (looked for {extensions})")
        found.extend(images)
        skipped.extend(p for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS)
    return found, skipped


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cmd_predict(args: argparse.Namespace) -> int:
    setup_logging(logging.WARNING)  # stdout is for results
    if args.long and args.format != "csv":
        return _fail(f"--long applies to --format csv only, not --format {args.format}")
    set_pixel_limit(args.max_pixels)
    try:
        model = find_model(args.model)
        paths, skipped = iter_image_paths(args.paths)
        predictor = Predictor(
            model,
            args.meta,
            threads=args.threads,
            batch_size=args.batch_size,
            low_confidence=args.low_confidence,
            venomous_threshold=args.venomous_threshold,
        )
        top_k = predictor.check_top_k(args.top_k)
    except (FileNotFoundError, UserError) as e:  # bad model, metadata, flags or folder
        return _fail(str(e))
    if predictor.meta.synthetic:
        print(f"snakeid: warning: {SYNTHETIC_WARNING}", file=sys.stderr)
    report_skipped(skipped, sys.stderr)
    writer = make_writer(
        args.format, long=args.long, out=sys.stdout, predictor=predictor, paths=paths, top_k=top_k
    )
    spec = predictor.meta.preprocess
    verdicts: Counter[str] = Counter()
    n_bad = 0
    progress = BatchProgress(len(paths), sys.stderr)
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
        for path in chunk:  # counted per row written: a path given twice is two photos
            if path in results:
                writer.result(path, results[path])
                verdicts[results[path].verdict] += 1
            else:
                writer.error(path, errors[path])
                n_bad += 1
        sys.stdout.flush()
        progress.update(len(chunk))
    progress.close()
    code = EXIT_SOME_FAILED if n_bad else EXIT_OK
    print(summary(verdicts, n_bad, code), file=sys.stderr)
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    setup_logging(getattr(logging, args.log_level.upper()))
    try:
        model = find_model(args.model)
    except FileNotFoundError as e:
        return _fail(str(e))
    import uvicorn

    from snakeid.deploy.serve import create_app

    try:
        app = create_app(
            model,
            args.meta,
            top_k=args.top_k,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            low_confidence=args.low_confidence,
            venomous_threshold=args.venomous_threshold,
            max_pixels=args.max_pixels,
            threads=args.threads,
        )
    except UserError as e:
        return _fail(str(e))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
