"""Small helpers every stage shares: logging, progress, seeding, device choice, hashing, JSON."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)


PROGRESS_EVERY_S = 20  # a log line this often in long loops when stdout is not a terminal


class Progress:
    """Progress of a long loop: a tqdm bar on a terminal; otherwise (CI, `dvc exp run` logs, a
    file) a log line every `every_s` seconds (0: every update, e.g. once per epoch), never a
    bar. `show=False` (a torchrun rank other than 0) shows nothing. `update(**postfix)` adds
    short named values (a loss, a score) to the bar and the log line."""

    def __init__(
        self, total: int, desc: str, unit: str, *, show: bool = True,
        every_s: float = PROGRESS_EVERY_S,
    ):  # fmt: skip
        from tqdm import tqdm

        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.every_s = every_s
        self.started = self._said = time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, unit=unit, mininterval=1.0, leave=False,
                        disable=None if show else True)  # fmt: skip
        self.log = show and bool(self.bar.disable)  # None resolved: no terminal

    def update(self, n: int = 1, **postfix: str) -> None:
        self.done += n
        self.bar.update(n)
        if postfix:
            self.bar.set_postfix(postfix)
        now = time.perf_counter()
        if self.log and now - self._said >= self.every_s:
            self._said = now
            rate = self.done / (now - self.started)
            extra = "".join(f" {k} {v}" for k, v in postfix.items())
            _logger.info("%s: %d/%d %s (%.1f %s/s)%s", self.desc, self.done, self.total,
                         self.unit, rate, self.unit, extra)  # fmt: skip

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger; called by stage scripts and the CLI, never by library code."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON deterministically (sorted keys, trailing newline) so diffs stay readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_csv(
    path: str | Path, rows: list[dict[str, Any]], fieldnames: Sequence[str] | None = None
) -> None:
    """Write a list of flat dicts (same keys) as CSV; floats rounded for readable diffs.
    `fieldnames`: the header when there are no rows (else the first row's keys)."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else list(fieldnames or []))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
