"""Process-level settings shared by training and evaluation: device, threads, determinism."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from monai.data import get_track_meta, set_track_meta
from monai.utils import set_determinism


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("segmentation.device = 'cuda' but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"segmentation.device = {name!r}: expected 'auto', 'cpu' or 'cuda'")
    return torch.device(name)


def bf16_autocast_available(device: torch.device) -> bool:
    return device.type == "cuda" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` intra-op threads, then restore the previous number.

    Per-slice augmentation and per-case metrics are many small tensor ops; with several threads each op
    waits for the other cores, which on a busy 2-core machine costs far more than it gains.
    """
    previous = torch.get_num_threads()
    if previous != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if previous != n:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def determinism(seed: int, enabled: bool) -> Iterator[None]:
    """Seed python/numpy/torch (MONAI's set_determinism) and, if enabled, force deterministic kernels.

    The global deterministic-algorithms flag is restored afterwards so that callers are not affected.
    """
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    set_determinism(seed=seed)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


@contextlib.contextmanager
def without_meta() -> Iterator[None]:
    """MONAI transforms return plain tensors inside the block (no MetaTensor bookkeeping)."""
    previous = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(previous)
