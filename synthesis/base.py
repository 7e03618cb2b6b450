"""The one interface every mask->image generator implements, and the registry that picks one by name.

Adding a generator = one module: a subclass + `@register("name")` and its settings (a `GeneratorConfig` subclass,
set as `config_class`), in `synthesis/generators/` or in an installed package's `cmr_synth.generators` entry point. Images are float32 in
[0, 1] (the data stage's normalisation); masks are uint8 in the internal convention (0 bg, 1 RV, 2 MYO, 3 LV).
Both are (N, H, W). A generator with `tissue_classes` > 0 also conditions on the torso: `sample` then takes
`context`, the real slices each mask was drawn or deformed from, and labels their background with tissue
classes fitted on its training slices (`synthesis.tissue`). A saved generator is one torch file `{"format", "generator", "config", "state"}` that
`load_generator` reads without knowing the class beforehand.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from data.io import atomic_path, load_torch, save_torch
from data.types import LABELS, NUM_CLASSES, DataError
from synthesis.config import GeneratorConfig, config_from_dict
from synthesis.tissue import TissueClasses

REGISTRY: dict[str, type["Generator"]] = {}
FILE_FORMAT = 1


def register(name: str):
    def deco(cls: type[Generator]) -> type[Generator]:
        if name in REGISTRY:
            raise ValueError(f"generator {name!r} registered twice ({REGISTRY[name].__module__} and {cls.__module__})")
        if not name.isidentifier():
            raise ValueError(f"generator name {name!r}: expected a Python identifier (it names a YAML section)")
        if not (isinstance(cls.config_class, type) and issubclass(cls.config_class, GeneratorConfig)):
            raise TypeError(f"generator {name!r}: config_class must be a GeneratorConfig subclass")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


class Generator(ABC):
    name: ClassVar[str] = ""
    config_class: ClassVar[type[GeneratorConfig]] = GeneratorConfig
    # True for a generator whose images are the real slices only transformed (no new appearance): its arm is an
    # augmentation-only baseline that synthetic arms must beat ("beyond augmentation" in the report).
    augmentation_only: ClassVar[bool] = False
    # Trained by gradient descent (checkpoints, several processes under DDP) rather than fitted in one pass
    learned: ClassVar[bool] = False

    def __init__(self, config: GeneratorConfig | None = None):
        if config is not None and not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__}: expected a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config if config is not None else self.config_class()
        self.tissue: TissueClasses | None = None  # fitted on the training slices when config.tissue_classes

    @abstractmethod
    def fit(self, masks: np.ndarray, images: np.ndarray, out_dir: Path, *, seed: int = 0,
            dist: Any = None) -> dict[str, Any]:
        """Learn p(image | mask) from paired training slices; resumes from `out_dir` if a checkpoint is there.

        Returns a small dict of training figures (steps, wall time, final losses) for the manifest. `dist`: a
        `segmentation.runtime.DistributedContext` for training on several processes (None: torchrun's
        environment, else one process); generators that do not train ignore it.
        """

    @abstractmethod
    def sample(self, masks: np.ndarray, *, seed: int, context: np.ndarray | None = None) -> np.ndarray:
        """Images for `masks` (N, H, W). One style/noise code, drawn from `seed`, is shared by all N slices so
        that a stack of slices from one 3D mask looks like one scan; the same seed gives the same images.
        `context`: the real slices (N, H, W) the masks come from (warped alike for deformed masks), or None;
        generators conditioned on tissue classes or keeping the real background need it."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """What `save` writes besides the config (plain data and tensors)."""

    @abstractmethod
    def restore(self, state: dict[str, Any]) -> None:
        """Inverse of `state` on a freshly built generator."""

    # ------------------------------------------------------------------------------- tissue classes
    @property
    def n_labels(self) -> int:
        """Labels of the condition maps this generator reads: the heart's, plus its tissue classes."""
        return self.tissue.n_labels if self.tissue is not None else NUM_CLASSES

    def fit_tissue(self, masks: np.ndarray, images: np.ndarray, seed: int = 0) -> np.ndarray:
        """Fit the tissue classes on the training slices (when configured); their condition maps."""
        k = self.config.tissue_classes
        if not k:
            self.tissue = None
            return masks
        self.tissue = TissueClasses.fit(masks, images, k, smooth_px=self.config.tissue_smooth_px, seed=seed)
        return self.tissue.label(masks, images)

    def tissue_state(self) -> dict[str, Any] | None:
        """The fitted tissue classes, for `state` (None without them)."""
        return self.tissue.state() if self.tissue is not None else None

    def restore_tissue(self, state: dict[str, Any] | None) -> None:
        """Inverse of `tissue_state`; a file whose class count differs from the config is refused."""
        self.tissue = TissueClasses.from_state(state) if state else None
        saved = self.tissue.n_classes if self.tissue else 0
        if saved != self.config.tissue_classes:
            raise ValueError(f"saved with {saved} tissue classes, config says tissue_classes={self.config.tissue_classes}")

    def conditions(self, masks: np.ndarray, context: np.ndarray | None) -> np.ndarray:
        """The condition map of heart `masks`: tissue classes of `context`'s background, or the masks as they are."""
        if self.tissue is None:
            return masks
        context = require_context(context, masks, f"{self.name}: conditioned on {self.tissue.n_classes} tissue classes")
        return self.tissue.label(masks, context)

    def save(self, path: Path | str) -> Path:
        """Write everything needed to sample later (weights + config), atomically."""
        payload = {"format": FILE_FORMAT, "generator": self.name,
                   "config": dataclasses.asdict(self.config), "state": self.state()}
        return save_torch(path, payload)

    @classmethod
    def load(cls, path: Path | str) -> "Generator":
        payload = read_generator_file(path)
        if payload["generator"] != cls.name:
            raise DataError(path, f"holds a {payload['generator']!r} generator, not {cls.name!r}")
        try:
            generator = cls(config_from_dict(cls.config_class, payload["config"]))
            generator.restore(payload["state"])
        except (ValueError, KeyError, RuntimeError) as exc:  # e.g. written by another version of the class
            raise DataError(path, f"does not fit the current {cls.name!r} generator ({exc})") from exc
        return generator


def read_generator_file(path: Path | str) -> dict[str, Any]:
    payload = load_torch(path, "generator file", keys=("format", "generator", "config", "state"))
    if payload["format"] != FILE_FORMAT:
        raise DataError(path, f"generator file of format {payload['format']!r}; this version reads format "
                              f"{FILE_FORMAT}")
    return payload


def build_generator(name: str, config: Any = None) -> Generator:
    """A fresh generator. `config` may be its section, a `SynthesisConfig` (the section is picked), a dict of
    the section's keys, or None for the defaults."""
    if name not in REGISTRY:
        raise ValueError(f"unknown generator {name!r}; available: {sorted(REGISTRY)}")
    cls = REGISTRY[name]
    if hasattr(config, "generator_config"):
        config = config.generator_config(name)
    elif isinstance(config, dict):
        config = config_from_dict(cls.config_class, config)
    return cls(config)


def load_generator(path: Path | str) -> Generator:
    """Load a saved generator of any kind: the file names its class."""
    name = read_generator_file(path)["generator"]
    if name not in REGISTRY:
        raise DataError(path, f"generator {name!r} is not available here; available: {sorted(REGISTRY)}")
    return REGISTRY[name].load(path)


# ------------------------------------------------------------------------------------------ input checks
def check_masks(masks: np.ndarray, shape: tuple[int, int] | None = None, divisor: int = 1) -> np.ndarray:
    """(N, H, W) labels 0..3 -> uint8; a clear ValueError otherwise."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks: expected (N, H, W), got shape {masks.shape}")
    if masks.size and (not np.issubdtype(masks.dtype, np.integer) or masks.min() < 0 or masks.max() >= NUM_CLASSES):
        raise ValueError(f"masks: expected integer labels {sorted(LABELS)}, got dtype {masks.dtype} with values "
                         f"{np.unique(masks)[:10].tolist()}")
    if shape is not None and tuple(masks.shape[1:]) != tuple(shape):
        raise ValueError(f"masks: this generator was trained on {shape[0]}x{shape[1]} slices, got "
                         f"{masks.shape[1]}x{masks.shape[2]}")
    if masks.shape[1] % divisor or masks.shape[2] % divisor:
        raise ValueError(f"masks: sides {masks.shape[1]}x{masks.shape[2]} must be divisible by {divisor}")
    return masks.astype(np.uint8, copy=False)


def check_context(context: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Real slices given with masks: the masks' shape, finite, float32."""
    context = np.asarray(context, dtype=np.float32)
    if context.shape != masks.shape:
        raise ValueError(f"context: expected the masks' shape {masks.shape}, got {context.shape}")
    if not np.isfinite(context).all():
        raise ValueError("context: contains NaN or Inf")
    return context


def require_context(context: np.ndarray | None, masks: np.ndarray, needed_by: str) -> np.ndarray:
    """`check_context`, and a clear error when there is none (`needed_by`: what needs the real slices)."""
    if context is None:
        raise ValueError(f"{needed_by}, so sampling needs the real slices the masks come from (context); masks "
                         f"sampled from the shape model have none: use the mask sources 'real' and 'deformed'")
    return check_context(context, masks)


def check_pair(masks: np.ndarray, images: np.ndarray, divisor: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs: same (N, H, W) shape, at least one slice, finite images in [0, 1]."""
    masks = check_masks(masks, divisor=divisor)
    images = np.asarray(images, dtype=np.float32)
    if images.shape != masks.shape:
        raise ValueError(f"images: expected the masks' shape {masks.shape}, got {images.shape}")
    if len(masks) == 0:
        raise ValueError("masks: no training slices")
    if not np.isfinite(images).all():
        raise ValueError("images: contain NaN or Inf")
    if images.min() < -1e-3 or images.max() > 1 + 1e-3:
        raise ValueError(f"images: expected intensities in [0, 1], got [{images.min():.3g}, {images.max():.3g}]")
    return masks, np.clip(images, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------- figures
LABEL_COLOURS = np.array([[0, 0, 0], [0.20, 0.45, 0.95], [0.95, 0.75, 0.15], [0.90, 0.20, 0.20]], np.float32)
TISSUE_GREYS = np.linspace(0.12, 0.6, 8, dtype=np.float32)  # tissue class k of a condition map: a grey


def label_colours(labels: np.ndarray) -> np.ndarray:
    """RGB picture of a label or condition map: the heart in colour, tissue classes in greys."""
    labels = np.asarray(labels)
    greys = np.repeat(TISSUE_GREYS[:, None], 3, axis=1)
    return np.concatenate([LABEL_COLOURS, greys])[np.clip(labels, 0, NUM_CLASSES + len(greys) - 1)]


def save_sample_grid(path: Path | str, masks: np.ndarray, rows: dict[str, np.ndarray], title: str = "") -> Path:
    """PNG: one column per mask; first row the masks in colour, then one grey row per entry of `rows`
    (e.g. {"real": ..., "seed 0": ...}), all on the same [0, 1] scale so rows compare honestly."""
    from matplotlib.figure import Figure

    n_rows, n_cols = 1 + len(rows), len(masks)
    fig = Figure(figsize=(1.6 * n_cols, 1.6 * n_rows + (0.3 if title else 0)), dpi=100)
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    for col in range(n_cols):
        axes[0, col].imshow(label_colours(masks[col]), interpolation="nearest")
        for row, images in enumerate(rows.values(), start=1):
            axes[row, col].imshow(images[col], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    for row, label in enumerate(["mask", *rows]):
        axes[row, 0].set_ylabel(label, fontsize=8)
    return save_image_grid(fig, axes, path, title)


def save_image_grid(fig, axes: np.ndarray, path: Path | str, title: str = "", bottom: float = 0.01) -> Path:
    """Finish a grid of images (no ticks, tight spacing, optional title) and write it as PNG atomically."""
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=bottom, top=0.93 if title else 0.99, wspace=0.03,
                        hspace=0.03)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
