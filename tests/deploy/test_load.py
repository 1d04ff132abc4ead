"""A short, bounded load test on loopback: 8 concurrent clients x 25 requests, zero errors."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tiny_model import build_tiny_model, demo_photo, running_server

pytestmark = pytest.mark.slow

CLIENTS, REQUESTS_PER_CLIENT = 8, 25


def test_concurrent_predictions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import httpx2

    model, _ = build_tiny_model(tmp_path / "model")
    photo = demo_photo(tmp_path / "snake.jpg").read_bytes()

    def client(_: int) -> tuple[list[float], list[str], set[str]]:
        latencies, errors, tops = [], [], set()
        with httpx2.Client(timeout=30.0) as http:
            for _ in range(REQUESTS_PER_CLIENT):
                start = time.perf_counter()
                try:
                    r = http.post(
                        f"{url}/predict", files={"file": ("snake.jpg", photo, "image/jpeg")}
                    )
                except httpx2.HTTPError as e:
                    errors.append(repr(e))
                    continue
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                else:
                    tops.add(r.json()["predictions"][0]["species"])
        return latencies, errors, tops

    with running_server(model, tmp_path) as url:
        assert url.startswith("http://127.0.0.1:")
        start = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            runs = list(pool.map(client, range(CLIENTS)))
        wall = time.perf_counter() - start

    latencies = np.array([t for run in runs for t in run[0]]) * 1000
    errors = [e for run in runs for e in run[1]]
    tops = set().union(*(run[2] for run in runs))
    assert errors == []
    assert len(latencies) == CLIENTS * REQUESTS_PER_CLIENT
    assert len(tops) == 1  # one shared session, the same answer for the same photo
    p50, p95 = np.percentile(latencies, [50, 95])
    with capsys.disabled():
        print(
            f"\nload: {len(latencies)} requests, {CLIENTS} clients, {len(errors)} errors, "
            f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, {len(latencies) / wall:.0f} req/s"
        )
