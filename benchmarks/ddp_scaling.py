"""Distributed scaling: training samples/s of the U-Net and SPADE steps with 1 vs N torchrun processes, the same
global batch (strong scaling: each process takes batch / N).

    python -m benchmarks.ddp_scaling --size 128 --batch 16 --steps 20 --nprocs 1 2
    python -m benchmarks.ddp_scaling --device cuda --nprocs 1 2 4 8 --size 256 --batch 64   # one GPU per process

Each configuration is a fresh `python -m torch.distributed.run --standalone --nproc_per_node=N` of this
module (Gloo on CPU, NCCL on GPUs); rank 0 reports the training-step throughput of `train_segmenter` and of
`fit_loop` (`spade`). On CPU every process gets --threads-per-process intra-op threads (default: the cores
divided by N), so 1 and N processes use the same cores: the figure is then the cost of DDP's all-reduce and
of smaller per-process batches, not a speed-up. On GPUs N needs N devices.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import parser, random_cases, random_pairs, report, setup


def worker(args: argparse.Namespace) -> None:
    """One torchrun process: train both models for --steps steps; rank 0 writes its figures to --worker-out."""
    from segmentation.config import SegmentationConfig
    from segmentation.runtime import init_distributed, shutdown_distributed
    from segmentation.train import train_segmenter
    from synthesis.generators.spade import SpadeConfig
    from synthesis.generators.spade import SpadeGenerator

    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = init_distributed(args.device, key="--device")
    figures = {"processes": ctx.world_size, "threads_per_process": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix=f"ddp-bench-{ctx.rank}-") as tmp:
        if "unet" in args.models:
            # one step more than timed, stopped by max_steps: no validation or checkpoint in the run
            cfg = SegmentationConfig(batch_size=args.batch, augment=False, device=args.device, steps=args.steps + 1,
                                     val_every=args.steps + 1)
            cases = random_cases(n_cases=8, n_slices=10, size=args.size)
            train_segmenter("real", cases, cases[:1], cfg, Path(tmp) / "warm-unet", max_steps=2, progress=False)
            result = train_segmenter("real", cases, cases[:1], cfg, Path(tmp) / "unet", max_steps=args.steps,
                                     progress=False)
            figures["unet_samples_per_s"] = result.samples_per_s
        if "spade" in args.models:
            masks, images = random_pairs(80, args.size)
            cfg = SpadeConfig(batch_size=args.batch, device=args.device, progress=False, steps=args.steps)
            SpadeGenerator(dataclasses.replace(cfg, steps=2)).fit(masks, images, Path(tmp) / "warm-spade")
            figures["spade_samples_per_s"] = SpadeGenerator(cfg).fit(masks, images, Path(tmp) / "spade")[
                "samples_per_second"]
    shutdown_distributed()
    if ctx.is_main:
        Path(args.worker_out).write_text(json.dumps(figures))


def launch(n: int, args: argparse.Namespace, threads: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as tmp:
        out = Path(tmp) / "figures.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "benchmarks.ddp_scaling", "--worker-out", str(out), "--device", args.device,
               "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
               "--models", *args.models] + (["--threads", str(threads)] if threads else [])
        env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        subprocess.run(cmd, check=True, env=env)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, size=128, batch=16, steps=20, repeats=1)
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--models", nargs="+", default=["unet", "spade"], choices=["unet", "spade"])
    p.add_argument("--threads-per-process", type=int, default=None,
                   help="CPU: intra-op threads of each process (default: cores // N, at least 1)")
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_out:
        worker(args)
        return 0
    device = setup(args)
    rows = []
    for n in args.nprocs:
        if device.type == "cuda" and n > torch.cuda.device_count():
            print(f"skip {n} processes: only {torch.cuda.device_count()} GPU(s)")
            continue
        if args.batch % n:
            print(f"skip {n} processes: batch {args.batch} is not divisible by {n}")
            continue
        threads = None if device.type == "cuda" else (args.threads_per_process or max(1, (os.cpu_count() or 1) // n))
        print(f"--- {n} process(es), {threads or 'default'} thread(s) each", flush=True)
        rows.append({"processes": n, **launch(n, args, threads)})
    base = rows[0] if rows else {}
    for row in rows:
        for model in args.models:
            key = f"{model}_samples_per_s"
            row[f"{model}_speedup"] = row[key] / base[key]
    report("ddp_scaling", args, device, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
