"""Resume state of the iNaturalist source: what was fetched per species, in append-only files.

`<slug>.pages.jsonl`: a header holding the query fingerprint, then one line per page of
observations. A page is appended only once fully fetched, and every line is written in one go; a
line without its newline (a kill mid-write) is cut off on load, so a killed run at worst fetches
that page again. `<slug>.files.jsonl`: one record per downloaded (bytes, sha256, size) or gone
photo; a later record for the same photo wins.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

_logger = logging.getLogger(__name__)


class SpeciesState:
    """Pages and files fetched for one species; a changed fingerprint starts the pages over."""

    def __init__(self, state_dir: Path, slug: str, fingerprint: dict[str, Any]):
        state_dir.mkdir(parents=True, exist_ok=True)
        self.pages_path = state_dir / f"{slug}.pages.jsonl"
        self.files_path = state_dir / f"{slug}.files.jsonl"
        self.observations: list[dict[str, Any]] = []
        self.cursor = 0
        self.exhausted = False
        lines = _read_jsonl(self.pages_path)
        if not lines or lines[0].get("fingerprint") != fingerprint:
            if lines:
                _logger.info("%s: query changed; fetching its observations again", slug)
            self.pages_path.unlink(missing_ok=True)
            _append_jsonl(self.pages_path, {"fingerprint": fingerprint})
            lines = []
        for n, page in enumerate(lines[1:], start=1):
            if page.get("after") != self.cursor:  # only if the file was edited by hand
                _logger.warning("%s: pages out of sequence; fetching from there again", slug)
                _rewrite_jsonl(self.pages_path, lines[:n])
                break
            self.observations.extend(page["observations"])
            self.cursor, self.exhausted = page["last_id"], page["exhausted"]
        self.files: dict[int, dict[str, Any]] = {
            int(r["photo_id"]): r for r in _read_jsonl(self.files_path)
        }

    @property
    def gone(self) -> dict[int, dict[str, Any]]:
        return {pid: r for pid, r in self.files.items() if "gone" in r}

    def gone_ids(self) -> set[int]:
        return set(self.gone)

    def add_page(self, observations: list[dict[str, Any]], last_id: int, exhausted: bool) -> None:
        page = {
            "after": self.cursor,
            "last_id": last_id,
            "exhausted": exhausted,
            "observations": observations,
        }
        _append_jsonl(self.pages_path, page)
        self.observations.extend(observations)
        self.cursor, self.exhausted = last_id, exhausted

    def add_file(self, record: dict[str, Any]) -> None:
        _append_jsonl(self.files_path, record)
        self.files[int(record["photo_id"])] = record


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines of a JSON-lines file; a torn tail is cut off the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    rows, good = [], 0
    while (end := data.find(b"\n", good)) >= 0:
        try:
            rows.append(json.loads(data[good:end]))
        except ValueError:
            break
        good = end + 1
    if good < len(data):
        _logger.info("%s: dropping %d bytes of an interrupted write", path, len(data) - good)
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), sort_keys=True) + "\n").encode()


def _append_jsonl(path: Path, obj: dict[str, Any]) -> None:
    with open(path, "ab") as f:
        f.write(_line(obj))


def _rewrite_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(_line(r) for r in rows))
    os.replace(tmp, path)
