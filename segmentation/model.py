"""Network, loss, optimiser, schedule and checkpoints: MONAI/torch building blocks chosen by the config.

A checkpoint is one self-describing file: besides the weights it holds the segmentation config (to rebuild
the network) and the preprocessing config (so `cmr-synth segment` prepares new images exactly like the
training data), plus everything needed to resume training bit-for-bit.
"""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import DynUNet, UNet

from data.config import PreprocessConfig
from data.io import load_torch, save_torch
from data.types import NUM_CLASSES, DataError
from segmentation.config import SegmentationConfig

CHECKPOINT_VERSION = 1


def build_model(cfg: SegmentationConfig) -> torch.nn.Module:
    """2D network, 1 input channel (normalised MR) -> 4 logits (bg, RV, MYO, LV)."""
    channels, strides = list(cfg.channels), list(cfg.strides)
    if len(strides) != len(channels) - 1:
        raise ValueError(f"segmentation.strides: expected {len(channels) - 1} values (one fewer than "
                         f"segmentation.channels = {channels}), got {strides}")
    if cfg.network == "unet":
        return UNet(spatial_dims=2, in_channels=1, out_channels=NUM_CLASSES, channels=channels, strides=strides,
                    num_res_units=cfg.num_res_units, dropout=cfg.dropout)
    if cfg.network == "dynunet":
        return DynUNet(spatial_dims=2, in_channels=1, out_channels=NUM_CLASSES,
                       kernel_size=[3] * len(channels), strides=[1, *strides], upsample_kernel_size=strides,
                       filters=channels, dropout=cfg.dropout or None, res_block=cfg.num_res_units > 0)
    raise ValueError(f"segmentation.network = {cfg.network!r}: expected 'unet' or 'dynunet'")


def build_loss() -> torch.nn.Module:
    """Dice + cross-entropy on softmax outputs against integer labels (B, 1, H, W)."""
    return DiceCELoss(to_onehot_y=True, softmax=True)


def build_optimizer(model: torch.nn.Module, cfg: SegmentationConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"segmentation.optimizer = {cfg.optimizer!r}: expected 'adam' or 'adamw'")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SegmentationConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per optimisation step, over exactly `cfg.steps` steps."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps)
    if cfg.schedule == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=cfg.steps, power=0.9)
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(f"segmentation.schedule = {cfg.schedule!r}: expected 'cosine', 'poly' or 'constant'")


# ------------------------------------------------------------------------------------------ checkpoints


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch global generator states, in types that `torch.load(weights_only=True)` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, model: torch.nn.Module, cfg: SegmentationConfig, step: int,
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
                    best_dice: float = float("nan"), best_step: int = 0, arm: str = "", seed: int = 0,
                    preprocess: PreprocessConfig | None = None,
                    scaler: torch.amp.GradScaler | None = None) -> Path:
    """torch.save to a temp file + os.replace: a kill never leaves a truncated checkpoint.

    `model` is the bare network (not a DDP / torch.compile wrapper), so the keys load into `build_model`."""
    payload = {
        "version": CHECKPOINT_VERSION,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "step": int(step),
        "best_dice": float(best_dice),
        "best_step": int(best_step),
        "rng": rng_state(),
        "config": dataclasses.asdict(cfg),
        "preprocess": dataclasses.asdict(preprocess) if preprocess is not None else None,
        "arm": arm,
        "seed": int(seed),
    }
    return save_torch(path, payload)


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """A segmentation checkpoint; a generator file or checkpoint, a truncated or foreign file is one DataError
    saying what it is (a generator's training checkpoint also holds 'model' and 'config')."""
    return load_torch(path, "segmentation checkpoint", keys=("version", "model", "config", "arm", "step"))


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network from the checkpoint's own config and load its weights; eval mode."""
    ckpt = read_checkpoint(path)
    try:
        model = build_model(config_from_dict(ckpt["config"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:  # edited by hand, or another version
        raise DataError(path, f"segmentation checkpoint whose weights do not fit its own network config "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from exc
    return model.to(device).eval(), ckpt


def config_from_dict(d: dict[str, Any]) -> SegmentationConfig:
    names = {f.name for f in dataclasses.fields(SegmentationConfig)}
    return SegmentationConfig(**{k: v for k, v in d.items() if k in names})


def preprocess_from_checkpoint(ckpt: dict[str, Any], path: Path | str) -> PreprocessConfig:
    if not ckpt.get("preprocess"):
        raise DataError(path, "checkpoint holds no preprocessing config; it was trained without one "
                              "(train_segmenter(..., preprocess=PreprocessConfig(...)))")
    names = {f.name for f in dataclasses.fields(PreprocessConfig)}
    return PreprocessConfig(**{k: v for k, v in ckpt["preprocess"].items() if k in names})
