"""What the benchmark scripts share: synthetic data, common options, timing, memory figures, JSON + table output."""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from data.types import CaseRef, PreparedCase


# ------------------------------------------------------------------------------------------------ data
def disc_masks(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """(n, size, size) uint8 label maps of three discs (MYO, LV, RV); the cost of a step does not depend on
    what the pixels show, only on their number."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.uint8)
    for s in range(n):
        for label, radius in ((2, size / 5), (3, size / 8), (1, size / 10)):
            cy, cx = rng.uniform(size / 3, 2 * size / 3, 2)
            masks[s][np.hypot(yy - cy, xx - cx) < radius] = label
    return masks


def random_pairs(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Masks and images in [0, 1] (image = mask / 3 + noise)."""
    rng = np.random.default_rng(seed)
    masks = disc_masks(n, size, rng)
    images = (masks / 3.0 + rng.normal(0, 0.1, masks.shape)).clip(0, 1).astype(np.float32)
    return masks, images


def random_cases(n_cases: int, n_slices: int, size: int, seed: int = 0) -> list[PreparedCase]:
    """Prepared cases of `random_pairs` slices, as the segmentation stage receives them."""
    masks, images = random_pairs(n_cases * n_slices, size, seed)
    cases = []
    for i in range(n_cases):
        part = slice(i * n_slices, (i + 1) * n_slices)
        ref = CaseRef(f"bench{i}", "ED", Path(f"bench{i}.nii.gz"), None)
        cases.append(PreparedCase(ref=ref, image=images[part], mask=masks[part], geometry=None))
    return cases


# --------------------------------------------------------------------------------------------- options
def parser(description: str, *, size: int, batch: int, steps: int, repeats: int = 3) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--size", type=int, default=size, help="slice side in pixels")
    p.add_argument("--batch", type=int, default=batch, help="global batch size (slices per step)")
    p.add_argument("--steps", type=int, default=steps, help="timed optimisation steps per repeat")
    p.add_argument("--repeats", type=int, default=repeats, help="repeats (the median is reported)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="write the figures to this JSON file")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    from segmentation.runtime import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels, in both loops
    return resolve_device(args.device, key="--device")


def environment(device: torch.device) -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# -------------------------------------------------------------------------------------------- measuring
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall-clock seconds of a block, with the GPU's queued work included."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> "Timer":
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # KB on Linux, bytes on macOS


def cuda_peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


# ---------------------------------------------------------------------------------------------- output
def table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of `rows` (floats with 3 significant decimals)."""
    columns = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def report(name: str, args: argparse.Namespace, device: torch.device, rows: list[dict[str, Any]],
           columns: Sequence[str] | None = None) -> dict[str, Any]:
    """Print the table (of `columns`, default all); write {benchmark, settings, environment, rows} to --out."""
    print(table(rows, columns))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    payload = {"benchmark": name, "settings": settings, "environment": environment(device), "rows": rows}
    if args.out:
        from data.io import write_text

        write_text(args.out, json.dumps(payload, indent=2))
        print(f"wrote {args.out}")
    return payload
