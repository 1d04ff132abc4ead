"""The one ONNX Runtime session set-up, for the feature engine, export's parity check, quantize
and predict. Torch-free: serving imports it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def ort_session(path: Path, threads: int = 0, *, spin: bool = True) -> Any:
    """A CPU session with every graph optimisation on `threads` intra-op threads (0: ONNX
    Runtime's default, one per core). `spin=False` stops the threads from spin-waiting after a
    run (they then take no CPU from other work between runs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
