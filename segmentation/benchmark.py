"""Throughput of `train_segmenter` against a bare MONAI training loop on the same data, in one process.

    python -m segmentation.benchmark --steps 30 --repeats 2 [--augment]

The bare loop is the MONAI tutorial loop: `monai.data.Dataset` + `DataLoader(shuffle=True)`, UNet,
DiceCELoss, optimiser, nothing else. `train_segmenter` adds what the experiment needs (deterministic
per-step batches, checkpoints, metrics.csv, progress bar); its samples/s counts optimisation steps only,
like the bare loop's. The two alternate (bare, ours, bare, ours, ...) so that load from other processes on a
shared machine affects both alike; the median of the repeats is reported.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset

from data.types import CaseRef, PreparedCase
from segmentation.config import SegmentationConfig
from segmentation.datasets import build_train_transforms
from segmentation.model import build_loss, build_model, build_optimizer
from segmentation.train import train_segmenter


def random_cases(n_cases: int, n_slices: int, size: int, seed: int = 0) -> list[PreparedCase]:
    """Cases of random discs; the cost of a training step does not depend on what the pixels show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    cases = []
    for i in range(n_cases):
        masks = np.zeros((n_slices, size, size), np.uint8)
        for s in range(n_slices):
            for label, radius in ((2, size / 5), (3, size / 8), (1, size / 10)):
                cy, cx = rng.uniform(size / 3, 2 * size / 3, 2)
                masks[s][np.hypot(yy - cy, xx - cx) < radius] = label
        images = (masks / 3.0 + rng.normal(0, 0.1, masks.shape)).clip(0, 1).astype(np.float32)
        ref = CaseRef(f"bench{i}", "ED", Path(f"bench{i}.nii.gz"), None)
        cases.append(PreparedCase(ref=ref, image=images, mask=masks, geometry=None))
    return cases


def bare_monai_loop(cases: list[PreparedCase], cfg: SegmentationConfig, steps: int, seed: int = 0) -> float:
    """Samples per second of the plain loop over `steps` steps, timed from the first batch like ours."""
    torch.manual_seed(seed)
    items = [{"image": c.image[s][None], "label": c.mask[s][None]} for c in cases for s in range(len(c.image))]
    transforms = build_train_transforms(cfg, cases[0].image.shape[1:])
    loader = DataLoader(Dataset(items, transform=transforms), batch_size=cfg.batch_size, shuffle=True,
                        num_workers=cfg.num_workers, drop_last=True)
    model, loss_fn = build_model(cfg), build_loss()
    optimizer = build_optimizer(model, cfg)
    model.train()
    done, start = 0, time.perf_counter()
    while done < steps:
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return steps * cfg.batch_size / (time.perf_counter() - start)


def pipeline_loop(cases: list[PreparedCase], cfg: SegmentationConfig, steps: int, seed: int = 0) -> float:
    """Samples per second of `train_segmenter` over `steps` steps (its own timer: optimisation steps only)."""
    cfg = SegmentationConfig(**{**cfg.__dict__, "steps": steps, "val_every": steps})
    with tempfile.TemporaryDirectory(prefix="seg-bench-") as tmp:
        result = train_segmenter("real", cases, cases[:1], cfg, Path(tmp), seed=seed, progress=True)
    return result.samples_per_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--augment", action="store_true", help="the same MONAI augmentation in both loops")
    args = p.parse_args(argv)
    cfg = SegmentationConfig(batch_size=args.batch_size, augment=args.augment, device="cpu")
    cases = random_cases(n_cases=8, n_slices=10, size=args.size)
    print(f"UNet{tuple(cfg.channels)}, {args.size}x{args.size}, batch {cfg.batch_size}, {args.steps} steps, "
          f"augment={args.augment}, torch threads={torch.get_num_threads()}")
    bare_monai_loop(cases, cfg, 2)  # warm-up: one-time kernel set-up must not count against the first loop
    bare, ours = [], []
    for r in range(args.repeats):
        bare.append(bare_monai_loop(cases, cfg, args.steps, seed=r))
        ours.append(pipeline_loop(cases, cfg, args.steps, seed=r))
        print(f"repeat {r}: bare MONAI loop {bare[-1]:.2f} samples/s, train_segmenter {ours[-1]:.2f} samples/s",
              flush=True)
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"median: bare {b:.2f} samples/s, train_segmenter {o:.2f} samples/s, ratio {o / b:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
