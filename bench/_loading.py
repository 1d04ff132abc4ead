"""Data-loading measurements: raw photos vs `verify`'s resized copies, and DataLoader workers.

Variants are interleaved (chunk by chunk, round by round) so that a burst of load from other
processes on a shared machine hits all of them alike; medians over the rounds are reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Subset

from snakeid.data.dataset import load_rgb
from snakeid.data.manifest import read_manifest
from snakeid.train.features import FeatureCache


def _rate(fn: Callable[[str], Any], paths: Sequence[str], threads: int) -> float:
    """Images/s of `fn` over `paths` with torch's intra-op threads set to `threads`."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t = time.perf_counter()
        for p in paths:
            fn(p)
        return len(paths) / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)


def decoding(
    root: Path, clean_dir: Path, transform: Callable[[Any], Any], n: int, rounds: int
) -> dict[str, Any]:
    """Images/s of decoding (and decoding + the train transform) of the raw photos vs their
    clean copies (the same photos), with torch's default threads and with one thread."""
    clean = read_manifest(clean_dir / "manifest.csv")[:n]
    pairs = [(str(root / r["raw_path"]), str(root / r["path"])) for r in clean]
    cores = torch.get_num_threads()
    variants: dict[str, tuple[Callable[[str], Any], int, int]] = {
        "raw decode": (load_rgb, 0, cores),
        "clean decode": (load_rgb, 1, cores),
        "raw decode+transform": (lambda p: transform(load_rgb(p)), 0, cores),
        "clean decode+transform": (lambda p: transform(load_rgb(p)), 1, cores),
        "clean decode+transform, torch 1 thread": (lambda p: transform(load_rgb(p)), 1, 1),
    }
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for i in range(0, len(pairs), 10):  # every variant on the same 10 photos, in turn
            names = list(variants) if (r + i // 10) % 2 == 0 else list(reversed(variants))
            for name in names:
                fn, which, threads = variants[name]
                rates[name].append(_rate(fn, [p[which] for p in pairs[i : i + 10]], threads))
    ips = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "images": len(pairs),
        "rounds": rounds,
        "torch_threads": cores,
        "images_per_s": ips,
        "mean_pixels": {
            "raw": _mean_pixels([a for a, _ in pairs]),
            "clean": _mean_pixels([b for _, b in pairs]),
        },
        "clean_vs_raw_speedup": ips["clean decode+transform"] / ips["raw decode+transform"],
        # share of a clean photo's decode + augment cost that is decoding: what decoding once
        # per photo instead of once per augmentation view would save in FeatureCache.fill
        "decode_share_clean": ips["clean decode+transform"] / ips["clean decode"],
        "transform_1_thread_vs_default": ips["clean decode+transform, torch 1 thread"]
        / ips["clean decode+transform"],
    }


def _mean_pixels(paths: Sequence[str]) -> float:
    total = 0
    for p in paths:
        with Image.open(p) as im:  # header only
            total += im.size[0] * im.size[1]
    return total / max(len(paths), 1)


def loader_workers(
    run: Callable[[torch.Tensor], np.ndarray],
    dataset: torch.utils.data.Dataset,
    scratch: Path,
    *,
    n: int,
    batch_size: int,
    workers: Sequence[int],
    rounds: int,
) -> dict[str, Any]:
    """FeatureCache.fill throughput per DataLoader workers; `run` is the frozen prefix
    train_head caches, as `snakeid.model.engine.prefix_engine` runs it."""
    subset = Subset(dataset, range(min(n, len(dataset))))
    rates: dict[int, list[float]] = {w: [] for w in workers}
    for r in range(rounds):
        order = list(workers) if r % 2 == 0 else list(reversed(workers))
        for w in order:
            cache = FeatureCache(scratch, f"workers{w}_{r}")
            cache.fill(
                run, [subset], batch_size=batch_size, workers=w, seed=0,
                desc=f"workers={w}",
            )  # fmt: skip
            rates[w].append(cache.images_per_s)
            cache.array = None
            cache.path.unlink(missing_ok=True)
    med = {str(w): statistics.median(v) for w, v in rates.items()}
    best = max(med, key=med.get)
    return {
        "images": len(subset),
        "rounds": rounds,
        "images_per_s": med,
        "runs": {str(w): v for w, v in rates.items()},
        "best_workers": int(best),
        "best_vs_0": med[best] / med[str(workers[0])],
    }
