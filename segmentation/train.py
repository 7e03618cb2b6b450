"""Step-based training of a 2D MONAI U-Net, torchvision-reference style: plain functions, read top to bottom.

`train_segmenter` is the same for every arm; only `make_train_stream` (segmentation.datasets) knows which data
an arm sees. Every `val_every` steps (and at the last step) the model is evaluated on the held-out REAL
validation patients (3D Dice on the prepared grid, slices stacked), `best.pt` keeps the best of these and
`last.pt` the latest; both are written atomically.

Reproducibility: the network is initialised from `seed` alone, each batch is a pure function of
(seed, step) and the checkpoint holds the optimiser, scheduler and every global RNG state; the torch RNG
(dropout) restarts from (seed, step, rank) at every checkpoint step. A run killed at any point and started
again with the same arguments resumes from `last.pt` and ends with exactly the weights of an uninterrupted
run (on CPU with `deterministic`; `metrics.csv` is cut back to the resumed step).

Distributed: under `torchrun --nproc_per_node=N` every process calls `train_segmenter` with the same
arguments. Each takes an equal contiguous share of every global batch (`cfg.batch_size`, which must be
divisible by N), DistributedDataParallel averages the gradients, so the update equals the single-process
one on the whole batch (DiceCELoss is a per-sample mean; instance norm is per sample), up to floating-point
rounding. Validation cases are split over the ranks and the scores gathered; only rank 0 writes files and
shows a progress bar; every rank returns the same `TrainResult`. Only dropout differs from a single-process
run: each rank draws its own masks.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_dice
from tqdm import tqdm

from data.config import PreprocessConfig
from data.io import StepLog
from data.settings import resumable_differences
from data.types import STRUCTURES, ForeignCheckpointError, PreparedCase
from segmentation.config import SegmentationConfig
from segmentation.datasets import make_train_stream
from segmentation.evaluate import one_hot, predict_probabilities
from segmentation.model import (build_loss, build_model, build_optimizer, build_scheduler, read_checkpoint,
                                save_checkpoint, set_rng_state)
from segmentation.runtime import (DistributedContext, autocast, autocast_dtype, derive_seed, determinism, grad_scaler,
                                  init_distributed, training_module)

METRICS_COLUMNS = ["step", "loss", "lr", "val_dice"]


@dataclass
class TrainResult:
    best_checkpoint: Path
    last_checkpoint: Path
    metrics_csv: Path
    best_val_dice: float
    final_val_dice: float  # at the last step: with best_val_dice, whether training had settled
    best_step: int
    steps: int  # optimisation steps completed (== cfg.steps unless stopped early by `max_steps`)
    resumed_from: int  # step of the `last.pt` this call started from (0 = fresh)
    wall_time_s: float  # this call, set-up and validation included
    train_time_s: float  # this call, optimisation steps only
    samples_per_s: float  # training samples (global batch) per second of train_time_s


# ----------------------------------------------------------------------------------------------- steps


def train_steps(model: torch.nn.Module, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, batches: Iterator[dict], n_steps: int,
                device: torch.device, *, dtype: torch.dtype | None = None,
                scaler: torch.amp.GradScaler | None = None,
                channels_last: bool = False) -> Iterator[tuple[float, float]]:
    """Run `n_steps` optimisation steps; yields (loss, learning rate used) after each one.

    `dtype`: autocast dtype (None = float32); `scaler`: loss scaling for float16."""
    scaler = scaler if scaler is not None else grad_scaler(device, None)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.train()
    for _ in range(n_steps):
        batch = next(batches)
        images = batch["image"].to(device, non_blocking=True, memory_format=memory_format)
        labels = batch["label"].to(device, non_blocking=True)
        with autocast(device, dtype):
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        yield float(loss.detach()), lr


def evaluate(model: torch.nn.Module, cases: Sequence[PreparedCase], batch_size: int = 16, *,
             autocast: bool = False, ctx: DistributedContext | None = None) -> dict[str, float]:
    """3D Dice per structure on the prepared grid (slices predicted one by one, then stacked), mean over cases.

    Good enough to pick a checkpoint; the reported test metrics are computed on the original grid
    (`segmentation.evaluate`). Same empty-structure convention as there: both empty -> 1, one empty -> 0.
    With a distributed `ctx` each rank predicts every world_size-th case and the per-case scores are
    gathered, so every rank returns the numbers of a single process.
    """
    ctx = ctx or DistributedContext()
    mine = {}
    for i in range(ctx.rank, len(cases), ctx.world_size):
        probs = predict_probabilities(model, cases[i].image, batch_size, autocast=autocast)
        dice = compute_dice(one_hot(probs.argmax(axis=0)), one_hot(cases[i].mask), include_background=False,
                            ignore_empty=False)
        mine[i] = dice[0].cpu().numpy()
    per_case = {i: scores for part in ctx.all_gather_objects(mine) for i, scores in part.items()}
    per_structure = np.mean([per_case[i] for i in range(len(cases))], axis=0)
    scores = {name: float(v) for name, v in zip(STRUCTURES, per_structure)}
    scores["mean"] = float(np.mean(per_structure))
    return scores


# ------------------------------------------------------------------------------------------- the loop


def train_segmenter(arm: str, real_cases: Sequence[PreparedCase] | None, val_cases: Sequence[PreparedCase],
                    cfg: SegmentationConfig, out_dir: Path | str, *,
                    synthetic_cases: Sequence[PreparedCase] | None = None, seed: int = 0,
                    preprocess: PreprocessConfig | None = None, max_steps: int | None = None,
                    progress: bool = True, dist: DistributedContext | None = None) -> TrainResult:
    """Train one segmenter for `cfg.steps` steps; resumes from `<out_dir>/last.pt` when it is there.

    `preprocess` is stored in the checkpoints so that `cmr-synth segment` can prepare new images the same
    way. `max_steps` stops after that many steps in total as if the process were killed there (no extra
    checkpoint): for tests of resumption and for time-boxed runs. `dist`: the process's place in a
    distributed run; by default `init_distributed(cfg.device)` (torchrun's environment, else one process).
    """
    wall_start = time.perf_counter()
    out_dir = Path(out_dir)
    best_path, last_path, csv_path = out_dir / "best.pt", out_dir / "last.pt", out_dir / "metrics.csv"
    if not val_cases:
        raise ValueError("train_segmenter: val_cases is empty; validation needs real patients with masks")
    if any(c.mask is None for c in val_cases):
        raise ValueError("train_segmenter: every validation case needs a mask")
    ctx = dist if dist is not None else init_distributed(cfg.device, key="segmentation.device")
    share = ctx.shard(cfg.batch_size, "segmentation.batch_size")
    device = ctx.device
    dtype = autocast_dtype(cfg.amp, device, "segmentation.amp")
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    pin_memory = cfg.pin_memory == "on" or (cfg.pin_memory == "auto" and device.type == "cuda")
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    with determinism(seed, cfg.deterministic):
        stream = make_train_stream(arm, real_cases, synthetic_cases, cfg, seed)
        net = build_model(cfg).to(device, memory_format=memory_format)  # same seed -> same initial weights
        optimizer, loss_fn = build_optimizer(net, cfg), build_loss()
        scheduler = build_scheduler(optimizer, cfg)
        scaler = grad_scaler(device, dtype)
        step, best_dice, best_step = 0, -math.inf, 0
        ckpt = ctx.main_then_broadcast(lambda: _resumable(last_path, cfg, arm, seed))  # rank 0 reads, all load
        if ckpt is not None:
            step, best_dice, best_step = _restore(ckpt, net, optimizer, scheduler, scaler)
        resumed_from = step
        example = torch.zeros(share.stop - share.start, 1, *stream.spatial_size, device=device)
        model = training_module(net, ctx, compile=cfg.compile, example=(example.to(memory_format=memory_format),),
                                what="segmentation network", dtype=dtype)
        log = StepLog(csv_path, first_step=step + 1, columns=METRICS_COLUMNS, enabled=ctx.is_main,
                      tensorboard=True)  # steps count from 1: the rows of the `step` steps done stay

        def checkpoint(path: Path) -> None:
            if ctx.is_main:
                save_checkpoint(path, model=net, cfg=cfg, step=step, optimizer=optimizer, scheduler=scheduler,
                                best_dice=best_dice, best_step=best_step, arm=arm, seed=seed,
                                preprocess=preprocess, scaler=scaler)

        stop = cfg.steps if max_steps is None else min(cfg.steps, int(max_steps))
        batches = iter(stream.loader(step, cfg.steps, rank=ctx.rank, world_size=ctx.world_size,
                                     pin_memory=pin_memory))
        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {arm} s{seed}", disable=not (progress and ctx.is_main),
                   mininterval=1.0, dynamic_ncols=True)
        train_time, val_dice = 0.0, float("nan")
        try:
            while step < stop:
                n = min(cfg.val_every - step % cfg.val_every, stop - step)
                torch.manual_seed(derive_seed(seed, step, ctx.rank))  # dropout: a stream per rank, exact resume
                t0 = time.perf_counter()
                for loss, lr in train_steps(model, loss_fn, optimizer, scheduler, batches, n, device, dtype=dtype,
                                            scaler=scaler, channels_last=cfg.channels_last):
                    (loss,) = ctx.all_reduce_mean([loss])  # the global batch's loss, as one process logs it
                    step += 1
                    log.add(step, loss=loss, lr=lr)
                    bar.update()
                    bar.set_postfix(loss=f"{loss:.4f}", val_dice=f"{val_dice:.4f}", refresh=False)
                train_time += time.perf_counter() - t0
                if step % cfg.val_every and step != cfg.steps:
                    break  # stopped by max_steps between two checkpoints: like a kill, nothing more is saved
                val_dice = evaluate(net, val_cases, cfg.batch_size, autocast=dtype == torch.bfloat16, ctx=ctx)["mean"]
                log.add(step, val_dice=val_dice)
                log.flush()
                if val_dice > best_dice:
                    best_dice, best_step = val_dice, step
                    checkpoint(best_path)
                checkpoint(last_path)  # after best.pt: a kill in between re-validates this step on resume
                bar.set_postfix(loss=f"{loss:.4f}", val_dice=f"{val_dice:.4f}")
        finally:
            bar.close()
            log.close()
            del batches  # shuts DataLoader workers down

    done = step - resumed_from
    result = TrainResult(best_checkpoint=best_path, last_checkpoint=last_path, metrics_csv=csv_path,
                         best_val_dice=float(best_dice) if best_dice > -math.inf else float("nan"),
                         final_val_dice=float(val_dice),
                         best_step=best_step, steps=step, resumed_from=resumed_from,
                         wall_time_s=time.perf_counter() - wall_start, train_time_s=train_time,
                         samples_per_s=done * cfg.batch_size / train_time if train_time > 0 else float("nan"))
    return ctx.broadcast_object(result)  # rank 0's timings on every rank


@dataclass(frozen=True)
class Convergence:
    """Had a segmenter's validation Dice stopped improving? Read from its metrics.csv after training."""

    final_val_dice: float  # at the last validation
    best_val_dice: float
    recent_gain: float  # mean of the last `window` validations minus the best of all before them (nan: too few)
    converged: bool  # recent_gain < min_delta: the curve had flattened; False when there are too few points


def convergence(val_dice: Sequence[float], window: int = 3, min_delta: float = 0.01) -> Convergence:
    """A plateau test on the validation curve: converged when the last `window` validations, on average, are
    less than `min_delta` Dice above the best one before them. The mean (not the best) of the recent window keeps
    one noisy checkpoint (a few validation patients) from reading as progress, while a curve that still climbs
    fails. Fewer than `window + 1` validations cannot show a plateau, so they count as not converged (a run of
    a few validations is what an undertrained quick run looks like)."""
    curve = np.asarray([v for v in val_dice if np.isfinite(v)], dtype=float)
    if len(curve) == 0:
        return Convergence(float("nan"), float("nan"), float("nan"), False)
    if len(curve) <= window:
        return Convergence(float(curve[-1]), float(curve.max()), float("nan"), False)
    gain = float(curve[-window:].mean() - curve[:-window].max())
    return Convergence(float(curve[-1]), float(curve.max()), gain, gain < min_delta)


def read_convergence(metrics_csv: Path | str, window: int = 3, min_delta: float = 0.01) -> Convergence:
    """`convergence` of the validation Dice column of a segmenter's metrics.csv."""
    frame = pd.read_csv(metrics_csv)
    return convergence(frame["val_dice"].dropna().tolist() if "val_dice" in frame else [], window, min_delta)


def _resumable(path: Path, cfg: SegmentationConfig, arm: str, seed: int) -> dict[str, Any] | None:
    """The checkpoint at `path` if there is one, after checking that it belongs to this run."""
    if not path.is_file():
        return None
    ckpt = read_checkpoint(path)
    if resumable_differences(ckpt["config"], cfg) or ckpt.get("arm") != arm or ckpt.get("seed") != seed:
        raise ForeignCheckpointError(f"{path} belongs to another run (arm {ckpt.get('arm')!r}, seed "
                                     f"{ckpt.get('seed')}, or a different segmentation config); use a fresh output "
                                     f"folder or delete it")
    return ckpt


def _restore(ckpt: dict[str, Any], model, optimizer, scheduler, scaler) -> tuple[int, float, int]:
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"]), float(ckpt["best_dice"]), int(ckpt["best_step"])
