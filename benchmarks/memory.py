"""Peak memory per stage: resident set size (RSS) of the process and, on GPUs, torch.cuda.max_memory_allocated.

    python -m benchmarks.memory --size 128 --batch 16 --steps 10
    python -m benchmarks.memory --device cuda --size 256 --batch 64 --stages unet_train spade_train

Each stage runs in a fresh Python process (so that one stage's peak does not hide the next one's) on
synthetic slices: `unet_train` (train_segmenter), `unet_predict` (slice-wise softmax of 8 volumes of 10
slices, what validation and evaluation do), `spade_train` (fit_loop of the `spade` generator) and
`spade_sample` (20 volumes of 10 slices). `baseline_rss_mb` is the RSS after imports and data creation;
`peak_rss_mb - baseline_rss_mb` is what the stage itself adds.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import cuda_peak_mb, parser, peak_rss_mb, random_cases, random_pairs, report, setup

STAGES = ("unet_train", "unet_predict", "spade_train", "spade_sample")


def run_stage(stage: str, args: argparse.Namespace, device: torch.device) -> dict:
    from segmentation.config import SegmentationConfig
    from segmentation.evaluate import predict_probabilities
    from segmentation.model import build_model
    from segmentation.train import train_segmenter
    from synthesis.generators.spade import SpadeConfig
    from synthesis.generators.spade import SpadeGenerator

    cases = random_cases(n_cases=8, n_slices=10, size=args.size)
    masks, images = random_pairs(80, args.size)
    seg_cfg = SegmentationConfig(batch_size=args.batch, steps=args.steps, val_every=args.steps, device=device.type)
    spade_cfg = SpadeConfig(batch_size=args.batch, steps=args.steps, device=device.type, progress=False)
    baseline = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"mem-{stage}-") as tmp:
        if stage == "unet_train":
            train_segmenter("real", cases, cases[:2], seg_cfg, Path(tmp), progress=False)
        elif stage == "unet_predict":
            model = build_model(seg_cfg).to(device)
            for case in cases:
                predict_probabilities(model, case.image, args.batch)
        elif stage == "spade_train":
            SpadeGenerator(spade_cfg).fit(masks, images, Path(tmp))
        elif stage == "spade_sample":
            generator = SpadeGenerator(spade_cfg)
            generator.build(masks.shape[1:], training=False)
            for seed in range(20):
                generator.sample(masks[:10], seed=seed)
    return {"stage": stage, "seconds": time.perf_counter() - start, "baseline_rss_mb": baseline,
            "peak_rss_mb": peak_rss_mb(), "stage_rss_mb": peak_rss_mb() - baseline,
            "cuda_peak_mb": cuda_peak_mb(device)}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, size=128, batch=16, steps=10, repeats=1)
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = setup(args)
    if args.child:
        print(json.dumps(run_stage(args.child, args, device)))
        return 0
    rows = []
    for stage in args.stages:
        cmd = [sys.executable, "-m", "benchmarks.memory", "--child", stage, "--device", args.device,
               "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps)]
        cmd += ["--threads", str(args.threads)] if args.threads else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{stage}: peak RSS {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
    report("memory", args, device, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
