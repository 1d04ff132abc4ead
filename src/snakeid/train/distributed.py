"""Data-parallel training over torchrun's process group, and the launcher `dvc.yaml` calls.

A training stage runs either as one plain process or as N ranks started by `torchrun`, which
sets RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / MASTER_ADDR / MASTER_PORT. Without
those variables everything here is a no-op (rank 0 of a world of 1, no process group), so
library code calls these helpers unconditionally and single-process callers need nothing.

Backend: `nccl` when training on CUDA, `gloo` otherwise. Rank 0 alone writes models, metrics,
plots and the feature cache's `features.json`; all ranks write disjoint rows of the shared
feature memmaps, so the workspace (or at least the features directory) must be one filesystem
that every rank sees, as it is on one machine.

    python -m snakeid.train.distributed --nproc 2 stages/train_head.py --split ...

runs the script under `torchrun --standalone --nproc_per_node 2` (a free port on this machine);
with `--nproc 1` it runs the script as a plain `python` process.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import logging
import os
import sys
from typing import Any

import numpy as np

_logger = logging.getLogger(__name__)

_TIMEOUT = datetime.timedelta(minutes=30)  # the feature pass of a big set can keep ranks apart


def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets its variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device: str, threads: int = 0) -> None:
    """Join torchrun's process group (once) and share this machine's cores between its ranks.

    `device` is the resolved training device: `cuda` selects nccl and pins this rank to GPU
    LOCAL_RANK; anything else uses gloo. `threads` > 0 (base.threads) sets torch's intra-op
    threads per rank; 0 gives each of the LOCAL_WORLD_SIZE ranks its share of the cores, so two
    ranks do not fight over the same ones.
    """
    import torch
    import torch.distributed as dist

    if threads > 0:
        torch.set_num_threads(threads)
    if not launched() or dist.is_initialized():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if threads <= 0 and not device.startswith("cuda"):
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dist.init_process_group(
            "nccl", timeout=_TIMEOUT, device_id=torch.device("cuda", local_rank)
        )
    else:
        dist.init_process_group("gloo", timeout=_TIMEOUT)
    atexit.register(shutdown)
    if not is_main():
        # One voice in the log: other ranks report only problems.
        logging.getLogger().setLevel(logging.WARNING)
    _logger.info(
        "distributed: %d ranks (%s), %d torch threads per rank",
        world_size(),
        dist.get_backend(),
        torch.get_num_threads(),
    )


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _group() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if _group() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if _group() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes outputs (always true without torchrun)."""
    return rank() == 0


def barrier() -> None:
    import torch.distributed as dist

    if _group():
        dist.barrier()


def _device() -> Any:
    """Where collective tensors must live: nccl only moves CUDA tensors."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(values: np.ndarray) -> np.ndarray:
    """Element-wise sum over ranks (float64)."""
    import torch
    import torch.distributed as dist

    if not _group():
        return np.asarray(values, dtype=np.float64)
    t = torch.as_tensor(np.asarray(values, dtype=np.float64), device=_device())
    dist.all_reduce(t)
    return t.cpu().numpy()


def all_gather(array: np.ndarray) -> list[np.ndarray]:
    """Every rank's `array` (same trailing shape and dtype, any length), in rank order."""
    import torch
    import torch.distributed as dist

    if not _group():
        return [array]
    dev, world = _device(), world_size()
    n = torch.tensor([len(array)], device=dev)
    lengths = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(lengths, n)
    longest = max(int(x) for x in lengths)
    # all_gather moves equal-sized tensors: pad each shard to the longest, trim afterwards.
    padded = np.zeros((longest, *array.shape[1:]), dtype=array.dtype)
    padded[: len(array)] = array
    mine = torch.from_numpy(padded).to(dev)
    out = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(out, mine)
    return [o[: int(k)].cpu().numpy() for o, k in zip(out, lengths, strict=True)]


def gather_strided(array: np.ndarray) -> np.ndarray:
    """Undo `strided`: rank r computed rows r, r + W, r + 2W, ...; return all rows in order."""
    parts = all_gather(array)
    if len(parts) == 1:
        return parts[0]
    out = np.empty((sum(len(p) for p in parts), *array.shape[1:]), dtype=array.dtype)
    for r, part in enumerate(parts):
        out[r :: len(parts)] = part
    return out


def strided(n: int) -> np.ndarray:
    """This rank's indices of 0..n-1 (r, r + W, ...): disjoint shards that cover everything."""
    return np.arange(rank(), n, world_size())


def shard(order: np.ndarray) -> np.ndarray:
    """This rank's part of an epoch's sample order, as `DistributedSampler` splits it.

    Every rank draws the same `order` (same seed); it is padded by wrapping to a multiple of
    the world size, so all ranks take the same number of steps (DDP needs that), and rank r
    takes positions r, r + W, .... With a per-rank batch of B / W, step i of the W ranks
    together covers exactly positions [i·B, (i+1)·B) of `order`: the single-process batch.
    """
    world = world_size()
    if world == 1:
        return order
    padded = np.resize(order, -(-len(order) // world) * world)  # np.resize repeats from the start
    return padded[rank() :: world]


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    import torch.distributed as dist

    if not _group():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_buffers(module: Any) -> None:
    """Average floating-point buffers (BatchNorm running stats) over ranks.

    Each rank updates its BatchNorm statistics from its own shard; averaging after every step
    keeps all ranks' models identical (so the EMA, validation and the kept checkpoint agree) and
    equals the running average of the ranks' mean batch statistics.
    """
    import torch.distributed as dist

    if not _group():
        return
    for b in module.buffers():
        if b.dtype.is_floating_point:
            dist.all_reduce(b)
            b.div_(world_size())


# ---------------------------------------------------------------------------------------------
# Launcher


def launch_command(nproc: int, script: str, args: list[str]) -> list[str]:
    """The command line that runs `script` as `nproc` ranks on this machine (1: plain python)."""
    if nproc == 1:
        return [sys.executable, script, *args]
    # --standalone: a private rendezvous on a free local port; several runs can share a machine.
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", script, *args,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m snakeid.train.distributed",
        description="Run a training stage as one process or as N data-parallel ranks (torchrun).",
    )
    ap.add_argument("--nproc", type=int, default=1, help="processes on this machine (1: no DDP)")
    ap.add_argument("script")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    ns = ap.parse_args(argv)
    if ns.nproc < 1:
        ap.error("--nproc must be at least 1")
    cmd = launch_command(ns.nproc, ns.script, ns.args)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # replace this process: the stage's exit code is the command's


if __name__ == "__main__":
    main()
