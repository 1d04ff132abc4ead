"""ATTRIBUTION.csv: one line per iNaturalist photo with what a CC BY credit needs."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

LICENSE_CODES: tuple[str, ...] = (
    "cc0",
    "cc-by",
    "cc-by-nc",
    "cc-by-sa",
    "cc-by-nd",
    "cc-by-nc-sa",
    "cc-by-nc-nd",
)

_LICENSE_URLS = {
    "cc0": "https://creativecommons.org/publicdomain/zero/1.0/",
    **{code: f"https://creativecommons.org/licenses/{code[3:]}/4.0/" for code in LICENSE_CODES[1:]},
}
ATTRIBUTION_COLUMNS: tuple[str, ...] = (
    "photo_id",
    "observation_id",
    "taxon",
    "license",
    "license_url",
    "attribution",
    "user_login",
    "observation_url",
    "photo_url",
)


def write_attribution(path: Path, rows: list[dict[str, Any]], tmp_dir: Path) -> None:
    """One line per photo with what a CC BY credit needs: author, licence, link to the source."""
    # The temporary file sits in the state folder: a kill must not strand a stray file next to
    # the outputs (the dispatcher refuses to clear a folder holding files it does not know).
    tmp = tmp_dir / (path.name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ATTRIBUTION_COLUMNS))
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    "photo_id": r["photo_id"],
                    "observation_id": r["observation_id"],
                    "taxon": r["taxon"],
                    "license": r["license"],
                    "license_url": _LICENSE_URLS.get(r["license"], ""),
                    "attribution": r["attribution"],
                    "user_login": r["user_login"],
                    "observation_url": f"https://www.inaturalist.org/observations/{r['observation_id']}",
                    "photo_url": f"https://www.inaturalist.org/photos/{r['photo_id']}",
                }
            )
    os.replace(tmp, path)
