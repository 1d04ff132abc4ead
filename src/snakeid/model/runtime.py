"""The torch process: one seed for everything, the device and the thread count.

Training stages, evaluation and the benchmarks call these; the torch-free shipping code never
does, which is why they live here and not in `snakeid.utils`.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, numpy and torch from one number."""
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # Same machine, same params -> same metrics. Ops without a deterministic kernel warn.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def worker_seed(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: derive numpy/random seeds from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def resolve_device(name: str) -> str:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is missing is an error."""
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available(),
    }
    if name == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if available[d])
    if not available.get(name, False):
        raise RuntimeError(f"device {name!r} was requested but is not available on this machine")
    return name


def set_threads(n: int) -> None:
    """Torch intra-op threads (0 keeps torch's default: one per core)."""
    if n > 0:
        torch.set_num_threads(n)
