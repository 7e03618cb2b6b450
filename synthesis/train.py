"""The one training loop of every learned generator, and the adversarial step the GANs share.

A learned generator (`LearnedGenerator`) provides its networks, `train_step(batch, step) -> losses` (a GAN
does its D and G updates inside) and `state_dict/load_state_dict`; `fit_loop` does everything else once:

* batches drawn from (seed, step) and the random generators re-seeded from (seed, step) around each step, so
  a run resumed from a checkpoint ends with exactly the weights of an uninterrupted one;
* an EMA of the generator weights (warmed up) that sampling uses;
* sample grids (fixed masks, fixed style seeds) in out_dir/samples/step_XXXXXX.png to watch it learn;
* atomic checkpoints every `checkpoint_every` steps and at the end; a metrics CSV of the losses per step;
* a guard that raises `TrainingDiverged` on a NaN/Inf loss, or when the discriminator has won completely
  for `collapse_patience` consecutive steps, instead of silently producing garbage.

Distributed (`torchrun --nproc_per_node=N`): every process runs `fit` with the same arguments; each takes an
equal contiguous share of every global batch and the networks being updated are wrapped in
DistributedDataParallel (see `AdversarialGenerator` for the discriminator). Per-sample noise (style codes,
reparameterisation, pix2pix dropout) comes from `Batch.randn` / `Batch.rand`: drawn for the whole global batch
from a generator seeded by (seed, step) and sliced, so it does not depend on the number of processes and the
run equals a single-process one up to floating-point rounding. DiffAugment draws from the global torch RNG,
seeded per (seed, step, rank): with it on, N processes augment differently from one (still one independent
draw per sample). Losses are averaged over the ranks before logging and the divergence guard, so every
rank stops together; only rank 0 writes checkpoints, metrics, grids and shows the progress bar.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import MultiScalePatchDiscriminator, PatchDiscriminator
from scipy import ndimage
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from data.io import StepLog, load_torch, save_torch
from data.settings import resumable_differences
from data.types import NUM_CLASSES, ForeignCheckpointError
from segmentation.runtime import (DistributedContext, autocast, autocast_dtype, derive_seed, grad_scaler,
                                  init_distributed, resolve_device, rng_devices, training_module)
from synthesis.base import Generator, check_masks, check_pair, require_context, save_sample_grid
from synthesis.config import AdversarialConfig, TrainConfig, parse_diffaugment
from synthesis.diffaugment import diff_augment

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
SAMPLES = "samples"


class TrainingDiverged(RuntimeError):
    """Training produced non-finite losses or a discriminator that wins completely; the last checkpoint
    (if any) is still the last good state."""

    def __init__(self, step: int, losses: dict[str, float], reason: str):
        self.step, self.losses, self.reason = step, dict(losses), reason
        shown = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        super().__init__(f"training diverged at step {step}: {reason} ({shown})")


class Batch(NamedTuple):
    """This process's share of one global batch: samples [offset, offset + len) of `total`."""

    image: torch.Tensor  # (n, 1, H, W) in [-1, 1]
    # (n, condition_channels, H, W): one-hot heart labels, then tissue classes (if any), then for background: real
    # the known image (the real slice, 0 in the region to paint) and the region (1 there)
    onehot: torch.Tensor
    offset: int = 0
    total: int = 0  # global batch size (0 = this batch is the whole batch)
    noise: torch.Generator | None = None  # seeded by (seed, step): the same on every rank
    blend: torch.Tensor | None = None  # background: real: (n, 1, H, W) weight of the painted image (blend_weight)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal noise (n, *shape) for these samples, drawn for the whole global batch and sliced:
        a sample's noise does not depend on how the batch is split over processes."""
        return self._draw(torch.randn, shape)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) noise (n, *shape), drawn like `randn`."""
        return self._draw(torch.rand, shape)

    def _draw(self, fn, shape: tuple[int, ...]) -> torch.Tensor:
        n = len(self.image)
        total = self.total or n
        out = fn((total, *shape), generator=self.noise, device=self.image.device)
        return out[self.offset:self.offset + n]


def onehot(masks: torch.Tensor, n_labels: int = NUM_CLASSES) -> torch.Tensor:
    """(B, H, W) integer labels -> (B, n_labels, H, W) float."""
    return F.one_hot(masks.long(), n_labels).permute(0, 3, 1, 2).float()


# ------------------------------------------------------------------------------ background-preserving mode
def inpaint_region(conditions: np.ndarray, margin_px: float) -> np.ndarray:
    """(N, H, W) bool: the heart (labels 1..3 of a condition map) and every pixel within `margin_px` of it."""
    heart = (conditions > 0) & (conditions < NUM_CLASSES)
    region = np.zeros(heart.shape, bool)
    for i, h in enumerate(heart):
        if h.any():
            region[i] = ndimage.distance_transform_edt(~h) <= margin_px
    return region


def blend_weight(region: np.ndarray, blend_px: float) -> np.ndarray:
    """(N, H, W) float32 weight of the sample: 0 outside `region`, rising to 1 at `blend_px` inside its edge."""
    weight = region.astype(np.float32)
    if blend_px <= 0:
        return weight
    for i, r in enumerate(region):
        if r.any() and not r.all():  # distance of each region pixel to the nearest known pixel
            weight[i] = np.clip(ndimage.distance_transform_edt(r) / blend_px, 0.0, 1.0)
    return weight


def blend(painted: np.ndarray, real: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The painted image inside the region, the real slice outside it, bit for bit (no arithmetic where w = 0)."""
    return np.where(weight > 0, weight * painted + (1 - weight) * real, real).astype(np.float32, copy=False)


def heart_windows(conditions: np.ndarray, side: int) -> np.ndarray:
    """(N, 2) top-left corners of the side x side windows centred on each slice's heart (the bounding box of
    labels 1..3), moved inside the slice where they would stick out; (-1, -1) for a slice without heart."""
    n, h, w = conditions.shape
    if side > min(h, w):
        raise ValueError(f"crop_px = {side} is larger than the {h}x{w} slices")
    corners = np.full((n, 2), -1, np.int64)
    for i, c in enumerate(conditions):
        ys, xs = np.nonzero((c > 0) & (c < NUM_CLASSES))
        if len(ys):
            corners[i] = [min(max((lo + hi + 1) // 2 - side // 2, 0), size - side)
                          for lo, hi, size in ((ys.min(), ys.max(), h), (xs.min(), xs.max(), w))]
    return corners


def cut_windows(slices: np.ndarray, corners: np.ndarray, side: int) -> np.ndarray:
    """The side x side window of every slice at its corner (a copy)."""
    return np.stack([a[y:y + side, x:x + side] for a, (y, x) in zip(slices, corners)]) if len(slices) else \
        np.zeros((0, side, side), slices.dtype)


def inpaint_channels(image: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """The two condition channels of background: real, (n, 2, H, W): the known image (`image`, (n, 1, H, W) in
    [-1, 1], blanked to 0 in the region) and the region (`region`, (n, 1, H, W) bool) as 0/1."""
    return torch.cat([image.masked_fill(region, 0.0), region.to(image.dtype)], 1)


def ema_avg_fn(decay: float):
    """EMA with warm-up: early on the average follows the weights closely (decay (1 + n) / (10 + n)), so a
    short run's EMA is not dominated by the random initialisation."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return update


class LearnedGenerator(Generator):
    """A generator trained by `fit_loop`. Subclasses build `self.net` (onehot, z -> image in [-1, 1]) and the
    training parts, and implement `train_step`."""

    learned: ClassVar[bool] = True

    config: TrainConfig
    config_class: ClassVar[type[TrainConfig]] = TrainConfig

    def __init__(self, config: TrainConfig | None = None):
        super().__init__(config)
        self.device = resolve_device(self.config.device, key=f"synthesis.{self.name}.device")
        self.image_shape: tuple[int, int] | None = None
        self.z_dim = 0  # size of the style code drawn per seed (0 = none)
        self.net: nn.Module | None = None
        self.ema: AveragedModel | None = None
        self.train_net: nn.Module | None = None  # what training calls: `net`, compiled and/or in DDP
        self.amp_dtype: torch.dtype | None = None
        self.scaler: torch.amp.GradScaler | None = None

    # -------------------------------------------------------------------------------- to implement
    @abstractmethod
    def build_network(self, image_shape: tuple[int, int]) -> nn.Module:
        """The generator network (what is averaged, saved and sampled); sets `self.z_dim`."""

    @abstractmethod
    def build_training(self) -> None:
        """Optimisers, discriminators, losses: everything only training needs."""

    @abstractmethod
    def training_parts(self) -> dict[str, Any]:
        """Name -> module/optimiser with a state_dict, besides `net` and `ema` (for checkpoints)."""

    @abstractmethod
    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        """One optimisation step; returns the same loss names every step. Call networks being trained through
        `self.train_net` (DDP / compiled) and scale losses with `self.backward` (fp16 loss scaling)."""

    def prepare_training(self, ctx: DistributedContext, batch: Batch) -> None:
        """Wrap the networks being trained for `ctx` (torch.compile when configured, DDP with several
        processes); `batch` gives the shapes of one step. Adversarial generators add the discriminator."""
        z = [torch.zeros(len(batch.image), self.z_dim, device=self.device)] if self.z_dim else []
        self.train_net = training_module(self.net, ctx, compile=self.config.compile, example=(batch.onehot, *z),
                                         what=f"{self.name} generator", dtype=self.amp_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), scaled for float16 autocast (a plain backward otherwise)."""
        self.scaler.scale(loss).backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step() (skipped by the scaler on non-finite float16 gradients), then update the scale.
        With several optimisers in one step use `self.scaler.step(opt)` for each and `self.scaler.update()` once."""
        self.scaler.step(optimizer)
        self.scaler.update()

    def synthesize(self, net: nn.Module, onehot: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Images in [-1, 1] from `net`; pix2pix overrides it to keep its dropout on."""
        return net(onehot, z)

    # ------------------------------------------------------------------- background: real (inpainting)
    @property
    def inpaints(self) -> bool:
        """background: real done by conditioning: the known image and the region are two more input channels
        and the output is blended into the real slice. A generator that keeps the background another way (the
        diffusion model re-imposes it while sampling) returns False."""
        return self.config.background == "real"

    @property
    def condition_channels(self) -> int:
        """Channels of the condition maps the networks read: `n_labels`, plus the known image and the region."""
        return self.n_labels + (2 if self.inpaints else 0)

    def inpainting(self, conditions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(region to paint (N, H, W) bool, blend weight of the painted image (N, H, W) float32). On heart-centred
        windows (`crop_px`) the window's outer pixels stay known, so the painting fades in before the edge where it
        is pasted back."""
        region = inpaint_region(conditions, self.config.inpaint_margin_px)
        if self.config.crop_px:
            region[:, [0, -1], :] = False
            region[:, :, [0, -1]] = False
        return region, blend_weight(region, self.config.blend_px)

    # ------------------------------------------------------------------------------------ shared
    @property
    def divisor(self) -> int:
        return self.config.size_divisor()

    def autocast(self):
        return autocast(self.device, self.amp_dtype)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.config.channels_last else torch.contiguous_format

    def build(self, image_shape: tuple[int, int], *, training: bool, seed: int = 0) -> None:
        """Fresh networks (initialised from `seed`) for slices of `image_shape`."""
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = self.build_network(self.image_shape).to(self.device, memory_format=self.memory_format)
            self.ema = AveragedModel(self.net, multi_avg_fn=ema_avg_fn(self.config.ema_decay), use_buffers=True)
            self.train_net = self.net
            if training:
                self.amp_dtype = autocast_dtype(self.config.amp, self.device, f"synthesis.{self.name}.amp")
                self.scaler = grad_scaler(self.device, self.amp_dtype)
                self.build_training()

    def fit(self, masks: np.ndarray, images: np.ndarray, out_dir: Path | str, *, seed: int = 0,
            dist: DistributedContext | None = None) -> dict[str, Any]:
        side = self.config.crop_px
        masks, images = check_pair(masks, images, 1 if side else self.divisor)
        if dist is not None:
            self.device = dist.device  # the context's device wins (e.g. one GPU per process in a sweep)
        conditions = self.fit_tissue(masks, images, seed)  # the tissue classes fix the network's input channels
        if side:  # heart-centred windows of the slices that hold a heart
            corners = heart_windows(conditions, side)
            held = corners[:, 0] >= 0
            if not held.any():
                raise ValueError(f"{self.name}: crop_px = {side} centres windows on the heart, but no training "
                                 f"slice holds one")
            conditions = cut_windows(conditions[held], corners[held], side)
            images = cut_windows(images[held], corners[held], side)
        self.build(conditions.shape[1:], training=True, seed=seed)
        return fit_loop(self, conditions, images, Path(out_dir), seed=seed, dist=dist)

    def sample(self, masks: np.ndarray, *, seed: int, context: np.ndarray | None = None,
               use_ema: bool = True) -> np.ndarray:
        if self.net is None:
            raise RuntimeError(f"{self.name}: fit or load the generator before sampling")
        side = self.config.crop_px
        masks = check_masks(masks, None if side else self.image_shape)
        keep = None
        if self.config.background == "real":
            keep = require_context(context, masks, f"{self.name}: background 'real' keeps the real slice outside "
                                                   f"the heart")
        conditions = self.conditions(masks, context)
        if not side:
            return self.render(conditions, seed=seed, use_ema=use_ema, context=keep)
        # heart-centred windows painted and pasted back; a slice without heart is its real slice
        corners = heart_windows(conditions, side)
        held = np.flatnonzero(corners[:, 0] >= 0)
        out = keep.copy()
        painted = self.render(cut_windows(conditions[held], corners[held], side), seed=seed, use_ema=use_ema,
                              context=cut_windows(keep[held], corners[held], side))
        for i, window in zip(held, painted):
            y, x = corners[i]
            out[i, y:y + side, x:x + side] = window
        return out

    def style_code(self, seed: int) -> torch.Tensor:
        """The (1, z_dim) style code `render` uses for `seed`: N(0, I) from a generator seeded with it, so that a
        seed always gives the same images (`benchmarks/encoded_styles.py` swaps in encoded codes here)."""
        return torch.randn(1, self.z_dim, generator=torch.Generator().manual_seed(int(seed)))

    @torch.no_grad()
    def render(self, conditions: np.ndarray, *, seed: int, use_ema: bool = True, chunk: int = 32,
               context: np.ndarray | None = None) -> np.ndarray:
        """Images for condition maps (heart labels, plus tissue classes when the generator has them); `context`
        (the real slices) is needed, and only read, in the background-preserving mode."""
        seed = int(seed)
        net = self.ema.module if use_ema else self.net
        was_training = net.training
        net.eval()
        z = None
        if self.z_dim:
            z = self.style_code(seed).to(self.device)
        if self.inpaints:
            context = require_context(context, conditions, f"{self.name}: background 'real' keeps the real slice "
                                                            f"outside the heart")
            region, weight = self.inpainting(conditions)
        out = []
        try:
            for start in range(0, len(conditions), chunk):
                part = slice(start, start + chunk)
                cond = onehot(torch.from_numpy(conditions[part]).to(self.device), self.n_labels)
                if self.inpaints:
                    real = torch.from_numpy(context[part] * 2 - 1)[:, None].to(self.device)
                    cond = torch.cat([cond, inpaint_channels(real, torch.from_numpy(region[part])[:, None]
                                                             .to(self.device))], 1)
                with torch.random.fork_rng(devices=rng_devices(self.device)):
                    torch.manual_seed(seed)  # the same per-chunk noise (pix2pix dropout) for every chunk
                    x = self.synthesize(net, cond, None if z is None else z.expand(len(cond), -1))
                image = ((x.float()[:, 0] + 1) / 2).clamp_(0, 1).cpu().numpy()
                out.append(blend(image, context[part], weight[part]) if self.inpaints else image)
        finally:
            net.train(was_training)
        return np.concatenate(out) if out else np.zeros(conditions.shape, np.float32)

    def _parts(self) -> dict[str, Any]:
        scaler = {"scaler": self.scaler} if self.scaler is not None and self.scaler.is_enabled() else {}
        return {"net": self.net, "ema": self.ema, **self.training_parts(), **scaler}

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self._parts().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        parts = self._parts()
        missing = sorted(set(parts) - set(state))
        if missing:
            raise ValueError(f"{self.name}: checkpoint lacks {missing}")
        for name, part in parts.items():
            part.load_state_dict(state[name])

    def state(self) -> dict[str, Any]:
        if self.net is None:
            raise RuntimeError(f"{self.name}: nothing to save before fit")
        return {"image_shape": list(self.image_shape), "net": _cpu(self.net.state_dict()),
                "ema": _cpu(self.ema.module.state_dict()),
                "tissue": self.tissue_state()}

    def restore(self, state: dict[str, Any]) -> None:
        self.restore_tissue(state.get("tissue"))  # before build: the classes fix the input channels
        self.build(tuple(state["image_shape"]), training=False)
        self.net.load_state_dict(state["net"])
        self.ema.module.load_state_dict(state["ema"])


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


# -------------------------------------------------------------------------------------------- the loop
def fit_loop(model: LearnedGenerator, masks: np.ndarray, images: np.ndarray, out_dir: Path, *,
             seed: int, dist: DistributedContext | None = None) -> dict[str, Any]:
    """Train `model` (networks built) on the pairs for `model.config.steps` steps, resuming from
    out_dir/checkpoint.pt when it is there. Returns figures for the manifest (the same on every rank).

    `dist`: the process's place in a distributed run; by default `init_distributed(config.device)`
    (torchrun's environment, else one process)."""
    cfg = model.config
    ctx = dist if dist is not None else init_distributed(cfg.device, key=f"synthesis.{model.name}.device")
    share = ctx.shard(cfg.batch_size, f"synthesis.{model.name}.batch_size")
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(masks, images)
    start, guard_state = load_checkpoint(model, out_dir / CHECKPOINT, seed=seed, fingerprint=fingerprint, ctx=ctx)
    guard = DivergenceGuard(cfg, consecutive=guard_state)
    metrics = StepLog(out_dir / METRICS, first_step=start, enabled=ctx.is_main)
    grid = grid_selection(masks, cfg.grid_masks, seed)
    # The pairs live on the device: a step only indexes them (no loader, no host-to-device copies).
    masks_t = torch.from_numpy(masks).to(model.device)
    images_t = torch.from_numpy(images).to(model.device)
    noise = torch.Generator(device=model.device)
    if model.inpaints:  # the region of every training slice, once
        region, weight = (torch.from_numpy(a).to(model.device)[:, None] for a in model.inpainting(masks))

    def batch_of(step: int) -> Batch:
        rng = np.random.default_rng([seed, step])
        index = rng.choice(len(masks), cfg.batch_size, replace=len(masks) < cfg.batch_size)[share]
        noise.manual_seed(int(rng.integers(2**62)))
        index = torch.from_numpy(index).to(model.device)
        image = (images_t[index] * 2 - 1).unsqueeze(1)
        cond, blend_t = onehot(masks_t[index], model.n_labels), None
        if model.inpaints:
            cond = torch.cat([cond, inpaint_channels(image, region[index])], 1)
            blend_t = weight[index]
        return Batch(image=image.contiguous(memory_format=model.memory_format),
                     onehot=cond.contiguous(memory_format=model.memory_format),
                     offset=share.start, total=cfg.batch_size, noise=noise, blend=blend_t)

    model.prepare_training(ctx, batch_of(start))
    t0, done, train_seconds = time.perf_counter(), start, 0.0
    try:
        with tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"fit {model.name}",
                  disable=not (cfg.progress and ctx.is_main), dynamic_ncols=True) as bar:
            for step in bar:
                t_step = time.perf_counter()
                batch = batch_of(step)
                with torch.random.fork_rng(devices=rng_devices(model.device)):
                    torch.manual_seed(derive_seed(seed, step, ctx.rank))  # DiffAugment: a stream per rank
                    losses = model.train_step(batch, step)
                # the global batch's losses: every rank then judges divergence alike
                losses = dict(zip(losses, ctx.all_reduce_mean(list(losses.values()))))
                guard.check(step, losses)
                model.ema.update_parameters(model.net)
                train_seconds += time.perf_counter() - t_step
                metrics.add(step, seconds=round(time.perf_counter() - t0, 3), **losses)
                metrics.flush()
                bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()}, refresh=False)
                done = step + 1
                if ctx.is_main and (done % cfg.sample_every == 0 or done == cfg.steps):
                    write_grid(model, masks[grid], images[grid], out_dir / SAMPLES / f"step_{done:06d}.png", done)
                if ctx.is_main and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                    save_checkpoint(model, out_dir / CHECKPOINT, step=done, seed=seed, fingerprint=fingerprint,
                                    guard_state=guard.consecutive)
    finally:
        metrics.close()
    seconds = time.perf_counter() - t0
    ran = done - start
    figures = {"steps": cfg.steps, "resumed_from": start, "seconds": round(seconds, 2),
               "steps_per_second": round(ran / seconds, 3) if ran and seconds > 0 else None,
               "train_seconds": round(train_seconds, 3),
               "samples_per_second": round(ran * cfg.batch_size / train_seconds, 3) if ran and train_seconds else None,
               "processes": ctx.world_size, "final_losses": metrics.tail_means()}
    return ctx.broadcast_object(figures)  # rank 0's figures everywhere


def data_fingerprint(masks: np.ndarray, images: np.ndarray) -> str:
    h = hashlib.sha1()
    for a in (masks, images):
        h.update(str((a.dtype, a.shape)).encode())
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def grid_selection(masks: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Fixed slices for the grids: preferably ones that show all three structures."""
    full = np.flatnonzero([np.isin([1, 2, 3], m).all() for m in masks])
    pool = full if len(full) >= n else np.arange(len(masks))
    return np.sort(np.random.default_rng(seed).choice(pool, min(n, len(pool)), replace=False))


def write_grid(model: LearnedGenerator, masks: np.ndarray, images: np.ndarray, path: Path, step: int) -> None:
    rows = {"real": images}
    keep = model.config.background == "real"  # then painted into the slices shown above, as when sampling
    for s in range(model.config.grid_styles):
        rows[f"seed {s}"] = model.render(masks, seed=s, context=images if keep else None)
    save_sample_grid(path, masks, rows, title=f"{model.name} step {step}")


class DivergenceGuard:
    """Raises `TrainingDiverged` on non-finite losses, or when D wins completely (losses `d_loss` below
    `collapse_d_eps` and `g_adv` at least `collapse_g_adv`) for `collapse_patience` consecutive steps."""

    def __init__(self, cfg: TrainConfig, consecutive: int = 0):
        self.cfg, self.consecutive = cfg, consecutive

    def check(self, step: int, losses: dict[str, float]) -> None:
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(step, losses, f"non-finite {', '.join(bad)}")
        if self.cfg.collapse_patience and "d_loss" in losses and "g_adv" in losses:
            won = losses["d_loss"] < self.cfg.collapse_d_eps and losses["g_adv"] >= self.cfg.collapse_g_adv
            self.consecutive = self.consecutive + 1 if won else 0
            if self.consecutive >= self.cfg.collapse_patience:
                raise TrainingDiverged(step, losses, f"the discriminator has won completely for {self.consecutive} "
                                                     f"consecutive steps (mode collapse / vanishing gradients)")


def save_checkpoint(model: LearnedGenerator, path: Path, *, step: int, seed: int, fingerprint: str,
                    guard_state: int) -> None:
    payload = {"step": step, "seed": seed, "fingerprint": fingerprint, "generator": model.name,
               "config": dataclasses.asdict(model.config), "image_shape": list(model.image_shape),
               "guard": guard_state, "model": model.state_dict()}
    save_torch(path, payload)


def load_checkpoint(model: LearnedGenerator, path: Path, *, seed: int, fingerprint: str,
                    ctx: DistributedContext | None = None) -> tuple[int, int]:
    """Restore `model` from `path` (if it is there) after checking it belongs to this run; returns (step,
    guard state), (0, 0) without a checkpoint. Under a distributed `ctx` rank 0 reads and checks it and every
    rank loads it."""
    ctx = ctx or DistributedContext()
    ckpt = ctx.main_then_broadcast(lambda: _checked_checkpoint(model, path, seed=seed, fingerprint=fingerprint))
    if ckpt is None:
        return 0, 0
    model.load_state_dict(ckpt["model"])
    return int(ckpt["step"]), int(ckpt["guard"])


def _checked_checkpoint(model: LearnedGenerator, path: Path, *, seed: int, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    ckpt = load_torch(path, "generator training checkpoint", map_location="cpu",
                      keys=("step", "seed", "fingerprint", "generator", "config", "image_shape", "model"))
    problems = []
    if ckpt["generator"] != model.name:
        problems.append(f"generator {ckpt['generator']!r} != {model.name!r}")
    if ckpt["seed"] != seed:
        problems.append(f"seed {ckpt['seed']} != {seed}")
    if ckpt["fingerprint"] != fingerprint:
        problems.append("different training slices")
    if tuple(ckpt["image_shape"]) != model.image_shape:
        problems.append(f"slice shape {tuple(ckpt['image_shape'])} != {model.image_shape}")
    current = dataclasses.asdict(model.config)
    changed = resumable_differences(ckpt["config"], model.config)
    if changed:
        problems.append("changed settings " + ", ".join(f"{k}: {ckpt['config'].get(k)!r} -> {current.get(k)!r}"
                                                         for k in changed))
    if ckpt["step"] > model.config.steps:
        problems.append(f"it is at step {ckpt['step']}, beyond steps={model.config.steps}")
    if problems:
        raise ForeignCheckpointError(f"{path}: cannot resume this run from the checkpoint: {'; '.join(problems)}. "
                         f"Use another output folder or delete the checkpoint to start over.")
    return ckpt


# --------------------------------------------------------------------------------------- adversarial step
class AdversarialGenerator(LearnedGenerator):
    """The GAN step shared by `spade` and `pix2pix`: a PatchGAN discriminator on (image, one-hot mask),
    hinge (or least-squares) loss, D feature matching, optional DiffAugment and lazy R1, TTUR optimisers.

    Subclasses implement `generator_forward(batch) -> (fake, {name: (weight, loss)})` for their own terms
    (L1, KL, ...), calling the generator through `self.train_net`.

    Under DDP each network is wrapped on its own. The D step calls D through its DDP wrapper (gradients
    averaged once per step); the G step calls D's local module with D's parameters frozen, so no D gradient
    is computed or synchronised there. D's buffers are not broadcast (spectral norm's power-iteration vectors
    follow from the weights alone, identical on every rank). The R1 penalty needs a double backward, which
    neither DDP's reducer nor torch.compile supports: it runs through the plain D module, and its gradient
    joins the D loss's in the one DDP backward of the D step (the same parameters, so the same all-reduce)."""

    config: AdversarialConfig
    config_class: ClassVar[type[AdversarialConfig]] = AdversarialConfig

    @abstractmethod
    def generator_forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, tuple[float, torch.Tensor]]]:
        """Fake images in [-1, 1] for the batch, and the generator's own weighted loss terms."""

    def build_training(self) -> None:
        cfg = self.config
        self.disc = build_discriminator(cfg, in_channels=1 + self.condition_channels, image_side=min(self.image_shape))
        self.disc.to(self.device)
        self.opt_g = torch.optim.Adam(self.net.parameters(), lr=cfg.lr_g, betas=tuple(map(float, cfg.betas)))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.lr_d, betas=tuple(map(float, cfg.betas)))
        self.disc_train = self.disc_frozen = self.disc  # see prepare_training
        self.augment_ops = parse_diffaugment(cfg.diffaugment)
        self.last_r1 = 0.0
        if cfg.adversarial_loss == "least_squares":
            from monai.losses import PatchAdversarialLoss

            self.adv_loss = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)

    def training_parts(self) -> dict[str, Any]:
        return {"disc": self.disc, "opt_g": self.opt_g, "opt_d": self.opt_d}

    def prepare_training(self, ctx: DistributedContext, batch: Batch) -> None:
        """The generator (see LearnedGenerator), then D: `disc_train` (compiled, in DDP) for the D step and
        `disc_frozen` (compiled, no DDP) for the G step."""
        super().prepare_training(ctx, batch)
        example = torch.cat([torch.cat([batch.image, batch.onehot], 1)] * 2)  # the D step's real + fake
        self.disc_train = training_module(self.disc, ctx, compile=self.config.compile, example=(example,),
                                          what=f"{self.name} discriminator", dtype=self.amp_dtype,
                                          sync_buffers=False)
        self.disc_frozen = self.disc_train.module if ctx.is_distributed else self.disc_train

    def discriminate(self, x: torch.Tensor,
                     disc: nn.Module | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(logits per scale, intermediate features of all scales) of `disc` (default: the plain D)."""
        out = (disc if disc is not None else self.disc)(x)
        if isinstance(self.disc, MultiScalePatchDiscriminator):
            logits, feats = out
            return logits, [f for scale in feats for f in scale]
        return [out[-1]], out[:-1]

    def d_loss(self, real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
        if self.config.adversarial_loss == "hinge":
            return sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real, fake)) / len(real)
        return self.adv_loss(real, target_is_real=True, for_discriminator=True) + \
            self.adv_loss(fake, target_is_real=False, for_discriminator=True)

    def g_adv_loss(self, fake: list[torch.Tensor]) -> torch.Tensor:
        if self.config.adversarial_loss == "hinge":
            return -sum(f.mean() for f in fake) / len(fake)
        return self.adv_loss(fake, target_is_real=True, for_discriminator=False)

    def r1_penalty(self, image: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """E ||d D(real) / d image||^2 (Mescheder et al. 2018)."""
        image = image.detach().requires_grad_(True)
        logits, _ = self.discriminate(torch.cat([image, onehot], 1))
        (grad,) = torch.autograd.grad(sum(l.sum() for l in logits), image, create_graph=True)
        return grad.pow(2).sum(dim=(1, 2, 3)).mean()

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        cfg = self.config
        n = len(batch.image)
        with self.autocast():
            fake, terms = self.generator_forward(batch)
            if batch.blend is not None:  # background: real: D and feature matching see the painted region only
                fake = batch.blend * fake + (1 - batch.blend) * batch.image

        # discriminator: real and fake of the same masks, identically augmented, in one forward pass
        self.disc.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        real_in = torch.cat([batch.image, batch.onehot], 1)
        fake_in = torch.cat([fake.detach().float(), batch.onehot], 1)
        with self.autocast():
            logits, _ = self.discriminate(torch.cat(diff_augment([real_in, fake_in], self.augment_ops)),
                                          self.disc_train)
            d_real, d_fake = [l[:n] for l in logits], [l[n:] for l in logits]
            d_loss = self.d_loss(d_real, d_fake)
        total_d = d_loss
        if cfg.r1_gamma > 0 and step % cfg.r1_every == 0:
            r1 = self.r1_penalty(batch.image, batch.onehot)
            total_d = total_d + 0.5 * cfg.r1_gamma * cfg.r1_every * r1
            self.last_r1 = float(r1.detach())
        self.backward(total_d)
        self.scaler.step(self.opt_d)  # before the G step, which sees the updated D

        # generator: D frozen (no weight gradients), real features only for feature matching
        self.disc.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        fake_in = torch.cat([fake.float(), batch.onehot], 1)
        with self.autocast():
            if cfg.lambda_fm > 0:
                aug_fake, aug_real = diff_augment([fake_in, real_in], self.augment_ops)
                logits, feats = self.discriminate(torch.cat([aug_fake, aug_real]), self.disc_frozen)
                g_fm = sum(F.l1_loss(f[:n], f[n:].detach()) for f in feats) / len(feats)
            else:
                (aug_fake,) = diff_augment([fake_in], self.augment_ops)
                logits, _ = self.discriminate(aug_fake, self.disc_frozen)
                g_fm = torch.zeros((), device=fake.device)
            g_adv = self.g_adv_loss([l[:n] for l in logits])
            g_loss = g_adv + cfg.lambda_fm * g_fm + sum(w * t for w, t in terms.values())
        self.backward(g_loss)
        self.scaler.step(self.opt_g)
        self.scaler.update()

        losses = {"d_loss": d_loss, "d_real": sum(l.mean() for l in d_real) / len(d_real),
                  "d_fake": sum(l.mean() for l in d_fake) / len(d_fake), "g_adv": g_adv, "g_fm": g_fm,
                  **{name: t for name, (_, t) in terms.items()}, "g_loss": g_loss}
        out = {k: float(v.detach()) for k, v in losses.items()}
        if cfg.r1_gamma > 0:
            out["r1"] = self.last_r1
        return out


def build_discriminator(cfg: AdversarialConfig, in_channels: int, image_side: int) -> nn.Module:
    """MONAI PatchGAN (or multi-scale) discriminator with the configured norm and spectral normalisation.

    Instance norm (or none) rather than MONAI's default batch norm: batch statistics would differ between
    real and fake inputs and let D tell them apart by statistics rather than content."""
    norm = {"instance": "INSTANCE", "batch": "BATCH", "none": None}[cfg.d_norm]
    common = dict(spatial_dims=2, channels=cfg.d_channels, in_channels=in_channels, out_channels=1,
                  norm=norm, bias=norm is None, last_conv_kernel_size=4)
    if cfg.d_scales > 1:
        disc = MultiScalePatchDiscriminator(num_d=cfg.d_scales, num_layers_d=cfg.d_layers,
                                            minimum_size_im=image_side, **common)
    else:
        if image_side / 2 ** cfg.d_layers < 2:
            raise ValueError(f"d_layers: {cfg.d_layers} strided layers are too many for {image_side}-pixel slices")
        disc = PatchDiscriminator(num_layers_d=cfg.d_layers, **common)
    if cfg.spectral_norm:
        for module in list(disc.modules()):
            if isinstance(module, nn.Conv2d):
                torch.nn.utils.parametrizations.spectral_norm(module)
    return disc
