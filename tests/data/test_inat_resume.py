"""Kill the iNaturalist download at any point and rerun: the same manifest, nothing twice.

Each download runs in its own process (as under `dvc repro`) against one fake server in this
process, and is killed with SIGKILL: no cleanup code gets to run.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fake_inat import RANDOM_FAULT_KINDS, FakeInat, World
from snakeid.data.manifest import read_manifest

NAMES = ["Naja kaouthia", "Bungarus fasciatus", "Calliophis bivirgata"]
RUNNER = """
import json, sys
from pathlib import Path
from snakeid.data.manifest import write_manifest
from snakeid.data.sources.inat import download_inat
from snakeid.data.sources.inat_config import InatConfig
from snakeid.taxa import Species

args = json.loads(sys.argv[1])
cfg = InatConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in args["cfg"].items()})
species = [Species(n, n.split()[0], True) for n in args["names"]]
write_manifest("data/raw/manifest.csv", download_inat(cfg, species, Path("data/raw"), seed=0))
"""


def start(workdir: Path, fake: FakeInat, **cfg: Any) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "api_url": fake.api_url,
        "max_rps": 1000.0,
        "backoff_base_s": 0.001,
        "timeout_s": 5.0,
    }
    args = {"cfg": settings | cfg, "names": NAMES}
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, json.dumps(args)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(workdir: Path, fake: FakeInat, **cfg: Any) -> bytes:
    """Run to the end; the manifest's bytes, after checking the folder matches it."""
    proc = start(workdir, fake, **cfg)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    raw = workdir / "data" / "raw"
    rows = read_manifest(raw / "manifest.csv")
    assert not [i for i, n in Counter(r["photo_id"] for r in rows).items() if n > 1]
    assert not list(raw.rglob("*.part"))
    on_disk = {
        p.relative_to(workdir).as_posix() for p in (raw / "images").rglob("*") if p.is_file()
    }
    assert on_disk == {r["path"] for r in rows}
    return (raw / "manifest.csv").read_bytes()


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.communicate(timeout=30)


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


@pytest.fixture
def fake() -> FakeInat:
    world = World.random(NAMES, seed=7, obs_per_species=(8, 14), inactive=[NAMES[2]])
    with FakeInat(world, max_per_page=5) as f:
        yield f


@pytest.fixture
def reference(fake: FakeInat, tmp_path: Path) -> bytes:
    """The manifest of an uninterrupted run."""
    return finish(tmp_path / "reference", fake)


def test_kill_mid_photo_then_rerun(fake: FakeInat, reference: bytes, tmp_path: Path) -> None:
    n_images = len(read_manifest(tmp_path / "reference/data/raw/manifest.csv"))
    before = len(fake.requests_to("image"))
    hang = fake.hang_on("image", nth=6)
    run = tmp_path / "run"
    proc = start(run, fake)
    assert hang.reached.wait(30)
    wait_for(lambda: list(run.rglob("*.part")))  # a half-written photo is on disk
    kill(proc)
    hang.release.set()
    assert finish(run, fake) == reference
    # Five photos were complete and are not fetched again; the sixth is, from the start.
    assert len(fake.requests_to("image")) - before == 6 + (n_images - 5)


def test_kill_mid_page_then_rerun(fake: FakeInat, reference: bytes, tmp_path: Path) -> None:
    hang = fake.hang_on("observations", nth=4)
    run = tmp_path / "run"
    proc = start(run, fake)
    assert hang.reached.wait(30)
    kill(proc)
    hang.release.set()
    assert finish(run, fake) == reference


def test_torn_state_lines_are_cut_off(fake: FakeInat, reference: bytes, tmp_path: Path) -> None:
    """A kill in the middle of appending to a state file leaves a line without its newline."""
    run = tmp_path / "run"
    assert finish(run, fake) == reference
    state = run / "data/raw/.inat_state"
    for f in state.glob("*.jsonl"):
        with open(f, "ab") as fh:
            fh.write(b'{"after": 123, "last_id": 4')
    assert finish(run, fake) == reference
    for f in state.glob("*.jsonl"):
        assert all(json.loads(line) for line in f.read_text().splitlines())


def test_repeated_kills_with_random_faults_end_at_the_truth(tmp_path: Path) -> None:
    seed = 11
    rng = random.Random(seed)
    world = World.random(NAMES, seed=seed, obs_per_species=(10, 16), inactive=[NAMES[2]])
    kinds = [k for k in RANDOM_FAULT_KINDS if k != "429_retry_after"]
    with FakeInat(world, max_per_page=4, fault_rate=0.15, fault_kinds=kinds, seed=seed) as fake:
        run = tmp_path / "run"
        interrupted = 0
        for _ in range(5):
            n = len(fake.log)
            proc = start(run, fake, max_retries=12)
            target = n + rng.randint(2, 20)
            wait_for(lambda t=target, p=proc: len(fake.log) >= t or p.poll() is not None)
            interrupted += proc.poll() is None
            kill(proc)
        assert interrupted >= 4
        manifest = finish(run, fake, max_retries=12)
        truth = fake.truth(NAMES)
    rows = read_manifest(run / "data/raw/manifest.csv")
    assert [{k: r[k] for k in truth[0]} for r in rows] == truth
    assert manifest.count(b"\n") == len(truth) + 1
