"""Data loading of segmenter training: slices/s the training loader delivers against slices/s a training step
consumes, per number of loader workers.

    python -m benchmarks.loading --size 128 --batch 16 --steps 30 --workers 0 1 2
    python -m benchmarks.loading --device cuda --amp bf16 --channels-last --workers 0 4 8 16

The loader is `TrainStream.loader` of the `real` arm with the pipeline's augmentation (random affine,
intensity, noise; --no-augment to turn it off), iterated without training (pinned memory on cuda, like
training). The consumption is `train_steps` on batches already in memory: the most the training step could
take. `headroom` = delivered / consumed: below 1 the GPU (or CPU) waits for data; raise num_workers.
The generators need no loader: their slices live on the device and a step only indexes them.
"""
from __future__ import annotations

import dataclasses
import itertools

import torch

from benchmarks.common import Timer, median, parser, random_cases, report, setup
from segmentation.config import SegmentationConfig
from segmentation.datasets import make_train_stream
from segmentation.model import build_loss, build_model, build_optimizer, build_scheduler
from segmentation.runtime import autocast_dtype, grad_scaler
from segmentation.train import train_steps


def loader_slices_per_s(cfg: SegmentationConfig, cases, steps: int, device: torch.device) -> float:
    """Slices per second delivered by the training loader (worker start-up excluded: timed from batch 2)."""
    stream = make_train_stream("real", cases, None, cfg, seed=0)
    batches = iter(stream.loader(0, steps + 1, pin_memory=device.type == "cuda"))
    next(batches)
    with Timer(device) as timer:
        for batch in batches:
            batch["image"].to(device, non_blocking=True)
    del batches
    return steps * cfg.batch_size / timer.seconds


def step_slices_per_s(cfg: SegmentationConfig, cases, steps: int, device: torch.device) -> float:
    """Slices per second consumed by training steps on batches that are already loaded (one batch reused)."""
    stream = make_train_stream("real", cases, None, dataclasses.replace(cfg, num_workers=0), seed=0)
    batch = next(iter(stream.loader(0, 1)))
    model = build_model(cfg).to(device, memory_format=torch.channels_last if cfg.channels_last else
                                torch.contiguous_format)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    dtype = autocast_dtype(cfg.amp, device, "--amp")
    loss_fn, scaler = build_loss(), grad_scaler(device, dtype)

    def run(n: int) -> None:
        for _ in train_steps(model, loss_fn, optimizer, scheduler, itertools.repeat(batch), n, device, dtype=dtype,
                             scaler=scaler, channels_last=cfg.channels_last):
            pass

    run(2)  # warm-up
    with Timer(device) as timer:
        run(steps)
    return steps * cfg.batch_size / timer.seconds


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, size=128, batch=16, steps=30)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="num_workers values to measure")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="loader without augmentation")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args(argv)
    device = setup(args)
    cfg = SegmentationConfig(batch_size=args.batch, augment=args.augment, steps=args.steps + 1, device=device.type,
                             amp=args.amp, channels_last=args.channels_last)
    cases = random_cases(n_cases=8, n_slices=10, size=args.size)
    print(f"{args.size}x{args.size}, batch {args.batch}, {args.steps} steps, augment={args.augment}, {device}")
    consumed = median([step_slices_per_s(cfg, cases, args.steps, device) for _ in range(args.repeats)])
    rows = []
    for workers in args.workers:
        wcfg = dataclasses.replace(cfg, num_workers=workers)
        delivered = median([loader_slices_per_s(wcfg, cases, args.steps, device) for _ in range(args.repeats)])
        rows.append({"num_workers": workers, "loader_slices_per_s": delivered, "step_slices_per_s": consumed,
                     "headroom": delivered / consumed})
        print(f"workers={workers}: loader {delivered:.1f} slices/s, training step {consumed:.1f} slices/s", flush=True)
    report("loading", args, device, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
