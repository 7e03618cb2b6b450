"""Training throughput of the pipeline's steps against a bare torch/MONAI loop on the same model, batch and data,
side by side in one process.

    python -m benchmarks.throughput --model unet --size 128 --batch 16 --steps 30 --repeats 3 [--augment]
    python -m benchmarks.throughput --model spade --size 128 --batch 8 --steps 20 --repeats 3
    python -m benchmarks.throughput --model all --device cuda --amp bf16 --channels-last --workers 8

U-Net: `train_segmenter` against the MONAI tutorial loop (`monai.data.Dataset` + `DataLoader(shuffle=True)`,
the same network, DiceCELoss, optimiser and, with --augment, the same MONAI transforms). SPADE:
`synthesis.train.fit_loop` (the `spade` generator) against a hand-written hinge-GAN loop on the same
SpadeStyleNet and PatchGAN discriminator with the same losses (hinge, feature matching, KL, L1, DiffAugment).
The pipeline adds what the experiment needs (per-step deterministic batches and seeds, EMA, metrics, loss
averaging over ranks, divergence guard); its samples/s count optimisation steps only (grids, checkpoints and
validation excluded), like the bare loops'. The loops alternate (bare, pipeline, bare, ...) so that load from
other processes affects both alike; the median of the repeats is reported with the overhead
1 - pipeline / bare.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset

from benchmarks.common import Timer, median, parser, random_cases, random_pairs, report, setup
from data.types import NUM_CLASSES, PreparedCase
from segmentation.config import SegmentationConfig
from segmentation.datasets import build_train_transforms
from segmentation.model import build_loss, build_model, build_optimizer
from segmentation.runtime import autocast, autocast_dtype, grad_scaler
from segmentation.train import train_segmenter
from synthesis.config import parse_diffaugment
from synthesis.generators.spade import SpadeConfig
from synthesis.diffaugment import diff_augment
from synthesis.generators.spade import SpadeGenerator, kl_divergence
from synthesis.train import build_discriminator


# ---------------------------------------------------------------------------------------------- U-Net
def bare_unet_loop(cases: list[PreparedCase], cfg: SegmentationConfig, steps: int, device: torch.device,
                   seed: int = 0) -> float:
    """Samples per second of the plain MONAI loop over `steps` steps, timed from the first batch."""
    torch.manual_seed(seed)
    items = [{"image": c.image[s][None], "label": c.mask[s][None]} for c in cases for s in range(len(c.image))]
    transforms = build_train_transforms(cfg, cases[0].image.shape[1:])
    loader = DataLoader(Dataset(items, transform=transforms), batch_size=cfg.batch_size, shuffle=True,
                        num_workers=cfg.num_workers, drop_last=True, pin_memory=device.type == "cuda")
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model, loss_fn = build_model(cfg).to(device, memory_format=memory_format), build_loss()
    optimizer = build_optimizer(model, cfg)
    dtype = autocast_dtype(cfg.amp, device, "--amp")
    scaler = grad_scaler(device, dtype)
    model.train()
    done = 0
    with Timer(device) as timer:
        while done < steps:
            for batch in loader:
                images = batch["image"].to(device, non_blocking=True, memory_format=memory_format)
                labels = batch["label"].to(device, non_blocking=True)
                with autocast(device, dtype):
                    loss = loss_fn(model(images), labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                done += 1
                if done == steps:
                    break
    return steps * cfg.batch_size / timer.seconds


def pipeline_unet(cases: list[PreparedCase], cfg: SegmentationConfig, steps: int, device: torch.device,
                  seed: int = 0) -> float:
    """Samples per second of `train_segmenter` over `steps` steps (its own timer: optimisation steps only)."""
    cfg = dataclasses.replace(cfg, steps=steps, val_every=steps)
    with tempfile.TemporaryDirectory(prefix="bench-unet-") as tmp:
        return train_segmenter("real", cases, cases[:1], cfg, Path(tmp), seed=seed, progress=False).samples_per_s


# ---------------------------------------------------------------------------------------------- SPADE
def bare_spade_loop(masks: np.ndarray, images: np.ndarray, cfg: SpadeConfig, steps: int, device: torch.device,
                    seed: int = 0) -> float:
    """Samples per second of a plain hinge-GAN loop with the `spade` generator's networks and losses."""
    torch.manual_seed(seed)
    size = masks.shape[1]
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net = SpadeGenerator(cfg).build_network((size, size)).to(device, memory_format=memory_format)
    disc = build_discriminator(cfg, in_channels=1 + NUM_CLASSES, image_side=size)
    disc = disc.to(device, memory_format=memory_format)
    opt_g = torch.optim.Adam(net.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas))
    ops = parse_diffaugment(cfg.diffaugment)
    dtype = autocast_dtype(cfg.amp, device, "--amp")
    scaler = grad_scaler(device, dtype)
    masks_t, images_t = torch.from_numpy(masks).to(device), torch.from_numpy(images).to(device)
    b = cfg.batch_size
    with Timer(device) as timer:
        for _ in range(steps):
            index = torch.randint(len(masks), (b,), device=device)
            real = (images_t[index] * 2 - 1).unsqueeze(1).contiguous(memory_format=memory_format)
            onehot = F.one_hot(masks_t[index].long(), NUM_CLASSES).permute(0, 3, 1, 2).float()
            with autocast(device, dtype):
                mu, logvar = net.encode(real)
                fake = net(onehot, mu + torch.randn_like(mu) * torch.exp(0.5 * logvar))
            disc.requires_grad_(True)
            opt_d.zero_grad(set_to_none=True)
            real_in, fake_in = torch.cat([real, onehot], 1), torch.cat([fake.detach().float(), onehot], 1)
            with autocast(device, dtype):
                logits = disc(torch.cat(diff_augment([real_in, fake_in], ops)))[-1]
                d_loss = F.relu(1 - logits[:b]).mean() + F.relu(1 + logits[b:]).mean()
            scaler.scale(d_loss).backward()
            scaler.step(opt_d)
            disc.requires_grad_(False)
            opt_g.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                aug_fake, aug_real = diff_augment([torch.cat([fake.float(), onehot], 1), real_in], ops)
                *feats, logits = disc(torch.cat([aug_fake, aug_real]))
                g_fm = sum(F.l1_loss(f[:b], f[b:].detach()) for f in feats) / len(feats)
                g_loss = (-logits[:b].mean() + cfg.lambda_fm * g_fm
                          + cfg.lambda_kl * kl_divergence(mu.float(), logvar.float())
                          + cfg.lambda_l1 * (fake.float() - real).abs().mean())
            scaler.scale(g_loss).backward()
            scaler.step(opt_g)
            scaler.update()
    return steps * b / timer.seconds


def pipeline_spade(masks: np.ndarray, images: np.ndarray, cfg: SpadeConfig, steps: int, device: torch.device,
                   seed: int = 0) -> float:
    """Samples per second of `fit_loop` (the `spade` generator) over `steps` steps, steps only."""
    cfg = dataclasses.replace(cfg, steps=steps, sample_every=steps, checkpoint_every=steps)
    with tempfile.TemporaryDirectory(prefix="bench-spade-") as tmp:
        return SpadeGenerator(cfg).fit(masks, images, Path(tmp), seed=seed)["samples_per_second"]


# ----------------------------------------------------------------------------------------------- main
def compare(name: str, bare, ours, steps: int, repeats: int) -> dict:
    """`bare(seed, steps)` and `ours(seed, steps)` -> samples/s, alternated `repeats` times after a warm-up."""
    bare(0, 3), ours(0, 3)  # one-time kernel, allocator and worker set-up must not count against the first loop
    bare_runs, our_runs = [], []
    for r in range(repeats):
        bare_runs.append(bare(r, steps))
        our_runs.append(ours(r, steps))
        print(f"{name} repeat {r}: bare {bare_runs[-1]:.2f} samples/s, pipeline {our_runs[-1]:.2f} samples/s",
              flush=True)
    b, o = median(bare_runs), median(our_runs)
    return {"model": name, "bare_samples_per_s": b, "pipeline_samples_per_s": o, "ratio": o / b,
            "overhead_pct": 100 * (1 - o / b), "bare_runs": bare_runs, "pipeline_runs": our_runs}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, size=128, batch=16, steps=30)
    p.add_argument("--model", default="all", choices=["unet", "spade", "all"])
    p.add_argument("--augment", action="store_true", help="U-Net: the same MONAI augmentation in both loops")
    p.add_argument("--workers", type=int, default=0, help="U-Net: DataLoader workers in both loops")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast in both loops")
    p.add_argument("--channels-last", action="store_true", help="channels-last networks and batches in both loops")
    args = p.parse_args(argv)
    device = setup(args)
    runtime = dict(device=device.type, amp=args.amp, channels_last=args.channels_last)
    rows = []
    if args.model in ("unet", "all"):
        cfg = SegmentationConfig(batch_size=args.batch, augment=args.augment, num_workers=args.workers, **runtime)
        cases = random_cases(n_cases=8, n_slices=10, size=args.size)
        print(f"U-Net {tuple(cfg.channels)}, {args.size}x{args.size}, batch {args.batch}, {args.steps} steps, "
              f"augment={args.augment}, workers={args.workers}, {device}, torch threads={torch.get_num_threads()}")
        rows.append(compare("unet", lambda r, n: bare_unet_loop(cases, cfg, n, device, seed=r),
                            lambda r, n: pipeline_unet(cases, cfg, n, device, seed=r), args.steps, args.repeats))
    if args.model in ("spade", "all"):
        cfg = SpadeConfig(batch_size=args.batch, progress=False, **runtime)
        masks, images = random_pairs(80, args.size)
        print(f"SPADE {tuple(cfg.channels)} + PatchGAN, {args.size}x{args.size}, batch {args.batch}, "
              f"{args.steps} steps, diffaugment={cfg.diffaugment!r}, {device}")
        rows.append(compare("spade", lambda r, n: bare_spade_loop(masks, images, cfg, n, device, seed=r),
                            lambda r, n: pipeline_spade(masks, images, cfg, n, device, seed=r), args.steps,
                            args.repeats))
    for row in rows:
        row.update(size=args.size, batch=args.batch, steps=args.steps)
    report("throughput", args, device, rows, columns=["model", "size", "batch", "steps", "bare_samples_per_s",
                                                      "pipeline_samples_per_s", "ratio", "overhead_pct"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
