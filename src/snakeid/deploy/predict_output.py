"""What `snakeid predict` shows: the result rows on stdout (table, JSON lines or CSV) and, on
stderr, the files skipped, the progress and the closing summary.

Kept apart from cli.py (the options, and the commands that run them) so that each `--format` is
one writer class, read and changed on its own.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from snakeid.deploy.predict import ImageResult, Prediction, Predictor
from snakeid.model.decision import HEADLINES, VERDICTS
from snakeid.model.preprocess import IMAGE_EXTENSIONS

SKIPPED_LISTED = 20  # skipped files named one per line; the rest counted


def report_skipped(skipped: Sequence[Path], err: TextIO) -> None:
    """Name the files that are not images on `err`, with their count."""
    if not skipped:
        return
    extensions = " ".join(sorted(IMAGE_EXTENSIONS))
    print(
        f"snakeid: skipped {len(skipped)} file(s) that are not images (not {extensions}):",
        file=err,
    )
    for path in skipped[:SKIPPED_LISTED]:
        print(f"  {path}", file=err)
    if len(skipped) > SKIPPED_LISTED:
        print(f"  ... and {len(skipped) - SKIPPED_LISTED} more", file=err)


class BatchProgress:
    """Photos done, on `err`: a bar redrawn in place on a terminal; otherwise, for `LARGE`
    photos or more, a line at every tenth. Torch-free (no tqdm): serving installs lack it."""

    LARGE = 100

    def __init__(self, total: int, err: TextIO) -> None:
        self.total, self.err, self.done = total, err, 0
        self.bar = err.isatty()
        self.lines = not self.bar and total >= self.LARGE
        self._next_tenth = 1

    def update(self, n: int) -> None:
        self.done += n
        if self.bar:
            filled = int(30 * self.done / self.total)
            bar = "#" * filled + "." * (30 - filled)
            print(f"\rsnakeid: [{bar}] {self.done}/{self.total} photos", end="", file=self.err)
            self.err.flush()
        elif self.lines:
            while self.done * 10 >= self._next_tenth * self.total and self._next_tenth <= 10:
                print(
                    f"snakeid: {self.done} of {self.total} photos "
                    f"({100 * self.done // self.total}%)",
                    file=self.err,
                )
                self._next_tenth += 1

    def close(self) -> None:
        if self.bar and self.done:
            print("\r" + " " * 60 + "\r", end="", file=self.err)  # the summary replaces it


def summary(verdicts: Counter[str], n_bad: int, code: int) -> str:
    """The closing line: photos, verdict counts, failures, exit status."""
    n_ok = sum(verdicts.values())
    counts = ", ".join(f"{verdicts[v]} {v}" for v in VERDICTS)
    failed = f"; {n_bad} failed" if n_bad else ""
    return f"snakeid: classified {n_ok} of {n_ok + n_bad} photos ({counts}){failed} (exit {code})"


class Writer(Protocol):
    def result(self, path: Path, r: ImageResult) -> None: ...

    def error(self, path: Path, message: str) -> None: ...


def make_writer(
    fmt: str,
    *,
    long: bool,
    out: TextIO,
    predictor: Predictor,
    paths: Sequence[Path],
    top_k: int,
) -> Writer:
    """The writer for `--format` (and `--long`); each prints its header, if any, at once."""
    if fmt == "table":
        return TableWriter(out, predictor, paths)
    if fmt == "json":
        return JsonWriter(out, synthetic=predictor.meta.synthetic)
    if fmt == "csv":
        return LongCsvWriter(out) if long else CsvWriter(out, top_k)
    raise ValueError(f"unknown format {fmt!r}")


class TableWriter:
    """Aligned columns; widths are known up front (all paths and species), so rows can stream.
    The model's scope heads the table; under each photo, its verdict and the reason."""

    def __init__(self, out: TextIO, predictor: Predictor, paths: Sequence[Path]) -> None:
        self.out = out
        self.pw = max([len("PATH"), *(len(str(p)) for p in paths)])
        self.sw = max(len(s.name) for s in predictor.species)
        self.cw = max(len("COMMON NAME"), *(len(s.common) for s in predictor.species))
        self.message = predictor.unknown_message
        print(f"# the model {predictor.scope}", file=out)
        self._line("PATH", "#", "SPECIES", "COMMON NAME", "PROB", "VENOMOUS", "UNKNOWN MARGIN")

    def _line(
        self, path: str, rank: str, species: str, common: str, prob: str, venom: str, score: str
    ) -> None:
        cells = f"{path:<{self.pw}}  {rank:>2}  {species:<{self.sw}}  {common:<{self.cw}}"
        print(f"{cells}  {prob:>6}  {venom:<8}  {score}".rstrip(), file=self.out)

    def _note(self, text: str) -> None:
        print(f"{'':<{self.pw}}  {'':>2}  {text}", file=self.out)

    def result(self, path: Path, r: ImageResult) -> None:
        for rank, p in enumerate(r.predictions, 1):
            self._line(
                str(path) if rank == 1 else "",
                str(rank),
                p.species,
                p.common_name,
                f"{100 * p.probability:.1f}%",
                "VENOMOUS" if p.venomous else "",
                f"{r.unknown_margin:+.2f}" + (" UNKNOWN" if r.unknown else "") if rank == 1 else "",
            )
        self._note(f"=> {HEADLINES[r.verdict]}: {r.reason}")
        if r.unknown:
            self._note(f"! {self.message}: the species above are only the closest ones")

    def error(self, path: Path, message: str) -> None:
        print(f"{str(path):<{self.pw}}  {'-':>2}  error: {message}", file=self.out)


class JsonWriter:
    """JSON lines: one object per photo, every object with the same keys.

    A failed photo has `error` set, no predictions and null decisions; `synthetic` is true on
    every line when the model was trained on the demo's generated photos.
    """

    def __init__(self, out: TextIO, *, synthetic: bool) -> None:
        self.out, self.synthetic = out, synthetic

    def _write(self, path: Path, fields: dict[str, Any]) -> None:
        line = {"path": str(path), **fields, "synthetic": self.synthetic}
        print(json.dumps(line), file=self.out)

    def result(self, path: Path, r: ImageResult) -> None:
        self._write(path, {**r.to_dict(), "error": None})

    def error(self, path: Path, message: str) -> None:
        empty = {k: None for k in PHOTO_FIELDS} | {"predictions": []}
        self._write(path, {**empty, "error": message})


# The per-photo fields of `ImageResult.to_dict` but the predictions: verdict and reason lead
# the CSV row, the rest follow the top-k.
LEAD_COLUMNS = ("verdict", "reason")
PHOTO_COLUMNS = (
    "venomous_probability",
    "possibly_venomous",
    "low_confidence",
    "unknown_score",
    "unknown_margin",
    "unknown",
)
PHOTO_FIELDS = (*LEAD_COLUMNS, *PHOTO_COLUMNS)
RANK_COLUMNS = ("species", "common_name", "venomous", "probability")


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _photo_cells(r: ImageResult) -> list[str]:
    """The per-photo decisions, in PHOTO_COLUMNS order."""
    return [
        f"{r.venomous_probability:.6f}",
        _bool(r.possibly_venomous),
        _bool(r.low_confidence),
        f"{r.unknown_score:.6f}",
        f"{r.unknown_margin:.6f}",
        _bool(r.unknown),
    ]


def _rank_cells(p: Prediction) -> list[str]:
    """One prediction, in RANK_COLUMNS order."""
    return [p.species, p.common_name, _bool(p.venomous), f"{p.probability:.6f}"]


class CsvWriter:
    """One row per photo: path, verdict, reason, the top-k in columns (species_1, ...,
    probability_k), the per-photo decisions, then `error` (empty unless the photo failed, when
    only it is set)."""

    def __init__(self, out: TextIO, top_k: int) -> None:
        self.writer = csv.writer(out, lineterminator="\n")
        ranked = [f"{c}_{rank}" for rank in range(1, top_k + 1) for c in RANK_COLUMNS]
        self.header = ["path", *LEAD_COLUMNS, *ranked, *PHOTO_COLUMNS, "error"]
        self.writer.writerow(self.header)

    def result(self, path: Path, r: ImageResult) -> None:
        ranked = [cell for p in r.predictions for cell in _rank_cells(p)]
        self.writer.writerow([path, r.verdict, r.reason, *ranked, *_photo_cells(r), ""])

    def error(self, path: Path, message: str) -> None:
        self.writer.writerow([path, *[""] * (len(self.header) - 2), message])


class LongCsvWriter:
    """`--long`: one row per (photo, rank), each repeating the photo's decisions; a failed photo
    is one row with only `path` and `error`."""

    HEADER = ("path", *LEAD_COLUMNS, "rank", *RANK_COLUMNS, *PHOTO_COLUMNS, "error")

    def __init__(self, out: TextIO) -> None:
        self.writer = csv.writer(out, lineterminator="\n")
        self.writer.writerow(self.HEADER)

    def result(self, path: Path, r: ImageResult) -> None:
        for rank, p in enumerate(r.predictions, 1):
            row = [path, r.verdict, r.reason, rank, *_rank_cells(p), *_photo_cells(r), ""]
            self.writer.writerow(row)

    def error(self, path: Path, message: str) -> None:
        self.writer.writerow([path, *[""] * (len(self.HEADER) - 2), message])
