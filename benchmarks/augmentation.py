"""Cost of the segmenter's training augmentation per sample: none, `standard` and `strong` (nnU-Net-grade), and what
each `strong` transform costs when it fires.

    python -m benchmarks.augmentation --size 128 --batch 16 --steps 30 --threads 1

Timed is `TrainStream.__getitems__` of the `real` arm (what a DataLoader worker runs per batch: pick the slices,
re-seed, transform, to tensors), in this process. `none` is the floor (slicing and tensor conversion). The
per-transform rows apply one `strong` transform with probability 1 to the same samples: the cost when it fires;
its cost per sample in training is about that times its probability.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks.common import Timer, median, parser, random_cases, report, setup
from segmentation.augmentation import strong_transforms
from segmentation.config import SegmentationConfig
from segmentation.datasets import make_train_stream
from segmentation.runtime import torch_threads, without_meta


def stream_ms_per_sample(cfg: SegmentationConfig, cases, steps: int, device) -> float:
    stream = make_train_stream("real", cases, None, cfg, seed=0)
    stream.__getitems__(stream.plan(0))  # warm-up (caches, first-call set-up)
    with Timer(device) as timer:
        for step in range(1, steps + 1):
            stream.__getitems__(stream.plan(step))
    return 1000 * timer.seconds / (steps * cfg.batch_size)


def transform_ms_when_applied(transform, samples: list[dict[str, np.ndarray]], device) -> float:
    transform.set_random_state(seed=0)
    transform.prob = 1.0
    with torch_threads(1), without_meta(), Timer(device) as timer:  # as in the stream: one thread, no metadata
        for sample in samples:
            transform(dict(sample))
    return 1000 * timer.seconds / len(samples)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, size=128, batch=16, steps=30)
    args = p.parse_args(argv)
    device = setup(args)
    cases = random_cases(n_cases=8, n_slices=10, size=args.size)
    base = SegmentationConfig(batch_size=args.batch, steps=args.steps + 1)
    print(f"{args.size}x{args.size}, {args.steps} batches of {args.batch}, torch threads {args.threads or 'default'}")
    rows = []
    for name, cfg in (("none", dataclasses.replace(base, augment=False)),
                      ("standard", dataclasses.replace(base, augmentation="standard")),
                      ("strong", dataclasses.replace(base, augmentation="strong"))):
        ms = median([stream_ms_per_sample(cfg, cases, args.steps, device) for _ in range(args.repeats)])
        rows.append({"augmentation": name, "ms_per_sample": ms, "samples_per_s": 1000 / ms})
        print(f"{name}: {ms:.3f} ms/sample", flush=True)
    samples = [{"image": c.image[i][None], "label": c.mask[i][None]} for c in cases for i in range(len(c.image))]
    samples = samples[: args.steps * args.batch]
    for transform in strong_transforms((args.size, args.size), flip_prob=0.0):
        ms = median([transform_ms_when_applied(transform, samples, device) for _ in range(args.repeats)])
        inverted = getattr(getattr(transform, "adjuster", None), "invert_image", False)  # the two gammas apart
        rows.append({"augmentation": f"strong: {type(transform).__name__}{' inverted' if inverted else ''} (p=1)",
                     "ms_per_sample": ms, "samples_per_s": 1000 / ms})
    report("augmentation", args, device, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
