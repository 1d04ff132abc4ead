"""What every stage script shares at its edge: logging set-up and clean errors for bad input.

A stage script defines `main()` and ends with `run_stage(main)`. Mistakes the user can fix (a
typo in `params.yaml`, an unknown species folder, a missing file) end the stage with one line,
`error: <message>`, and exit code 2, instead of a traceback. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from snakeid.config import BaseConfig, ParamsError, base_config, load_params
from snakeid.errors import UserError
from snakeid.taxa import Species, SpeciesFileError, read_species_file
from snakeid.utils import setup_logging

USAGE_ERROR_EXIT = 2  # the code argparse uses for a bad command line

# Exceptions that mean "your input is wrong". A missing file is nearly always a path in
# params.yaml or an earlier stage not yet run; the message names it.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    ParamsError,
    SpeciesFileError,
    FileNotFoundError,
    yaml.YAMLError,
)


@dataclass(frozen=True)
class StageInputs:
    """What every stage reads first: its params file, the `base` section, the species."""

    params: dict[str, Any]
    base: BaseConfig
    species: list[Species]
    region: str | None  # the species file's `region`, if it states one


def stage_inputs(params_path: Path) -> StageInputs:
    params = load_params(params_path)
    base = base_config(params)
    species, region = read_species_file(base.species_file)
    return StageInputs(params, base, species, region)


def run_stage(main: Callable[[], object]) -> NoReturn:
    """Set up logging, run `main`, and exit: 0 on success, 2 with a one-line error on bad input."""
    setup_logging()
    try:
        main()
    except USER_ERRORS as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(USAGE_ERROR_EXIT)
    sys.exit(0)


def _one_line(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError) and e.filename is not None:
        return f"{e.filename}: no such file or directory"
    return " ".join(str(e).split())
