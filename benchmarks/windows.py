"""What heart-centred windows (`synthesis.<generator>.crop_px`) save a learned generator in the background-preserving
mode: training samples/s and seconds per sampled slice on whole slices and on windows, side by side.

    python -m benchmarks.windows --model diffusion --size 128 --window 96 --batch 8 --steps 5 --threads 1
    python -m benchmarks.windows --model spade --size 128 --window 96 --batch 8 --steps 5

Training: `train_step` of the generator on one fixed batch (the step's cost depends on the pixel count, not on
what the pixels show), the same networks and settings but for the window. Sampling: `sample` of one stack of
`--batch` slices with their real slices as context (for windows: cutting, painting and pasting back included).
The diffusion model samples with `--sample-steps` DDIM steps.
"""
from __future__ import annotations

import numpy as np
import torch

from benchmarks.common import Timer, median, parser, random_pairs, report, setup
from segmentation.runtime import DistributedContext
from synthesis.base import build_generator
from synthesis.train import Batch, cut_windows, heart_windows, inpaint_channels, onehot


def time_generator(name: str, size: int, window: int, args, device: torch.device) -> dict:
    masks, images = random_pairs(args.batch, size, seed=0)
    gen = build_generator(name, {"background": "real", "crop_px": window, "progress": False,
                                 **({"sample_steps": args.sample_steps} if name == "diffusion" else {})})
    side = window or size
    conditions, pixels = masks, images
    if window:
        corners = heart_windows(masks, window)
        conditions, pixels = cut_windows(masks, corners, window), cut_windows(images, corners, window)
    gen.device = device
    gen.build((side, side), training=True, seed=0)
    image = torch.from_numpy(pixels * 2 - 1)[:, None].to(device)
    cond = onehot(torch.from_numpy(conditions).to(device), gen.n_labels)
    if gen.inpaints:
        region, _ = gen.inpainting(conditions)
        cond = torch.cat([cond, inpaint_channels(image, torch.from_numpy(region)[:, None].to(device))], 1)
    batch = Batch(image=image, onehot=cond, noise=torch.Generator(device=device).manual_seed(0))
    gen.prepare_training(DistributedContext(device=device), batch)
    gen.train_step(batch, 0)  # warm-up
    train, sample = [], []
    for _ in range(args.repeats):
        with Timer(device) as t:
            for step in range(args.steps):
                gen.train_step(batch, step)
        train.append(args.steps * args.batch / t.seconds)
        with Timer(device) as t:
            gen.sample(masks, seed=0, context=images)
        sample.append(t.seconds / args.batch)
    return {"model": name, "slice_px": size, "window_px": window or "-", "train_samples_per_s": round(median(train), 2),
            "sample_s_per_slice": round(median(sample), 3)}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, size=128, batch=8, steps=5)
    p.add_argument("--model", default="diffusion", choices=["diffusion", "spade", "cvae", "pix2pix"])
    p.add_argument("--window", type=int, default=96, help="crop_px of the windowed row")
    p.add_argument("--sample-steps", type=int, default=25, help="diffusion: DDIM steps when sampling")
    args = p.parse_args(argv)
    device = setup(args)
    rows = [time_generator(args.model, args.size, window, args, device) for window in (0, args.window)]
    report("windows", args, device, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
