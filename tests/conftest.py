"""Fixtures shared by the source and download-stage tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from snakeid.data.sources.demo import DemoConfig
from snakeid.taxa import Species

REPO = Path(__file__).resolve().parents[1]

# Two species with a hand-made demo look and one without (its look comes from a name hash).
SPECIES = [
    Species("Naja kaouthia", "Monocled Cobra", True),
    Species("Bungarus fasciatus", "Banded Krait", True),
    Species("Daboia siamensis", "Eastern Russell's Viper", True),
]


@pytest.fixture
def species() -> list[Species]:
    return list(SPECIES)


@pytest.fixture
def species_file(tmp_path: Path) -> Path:
    path = tmp_path / "taxa.yaml"
    path.write_text(yaml.safe_dump([s.to_dict() for s in SPECIES], sort_keys=False))
    return path


@pytest.fixture
def tiny_demo() -> DemoConfig:
    """A demo set small enough to generate in well under a second."""
    return DemoConfig(
        observations_rare=3,
        observations_common=5,
        max_photos_per_observation=3,
        image_size=96,
        broken_files=3,
        duplicates=2,
    )
