"""Tissue classes around the heart: what a generator conditions on besides the heart mask.

The heart mask says nothing about the torso around it (lungs, fat, chest wall, liver), so a generator given
only the mask paints a torso of its own. Published cardiac pipelines condition on extra tissue labels
(Amirrajab et al. 2022; Al Khalil et al. 2023). Here they are intensity classes of the background: a 1-D
k-means of the (lightly smoothed) background pixels of the generator's *training* slices gives K - 1 cut
points, fitted once in `fit` and stored with the generator; any real slice (a training slice, or the
slice a synthetic mask was drawn or deformed from) is then labelled with those cut points.

A condition map keeps the heart labels 0..3 as they are and gives each background pixel the label
`NUM_CLASSES + class` (class 0 = darkest, e.g. air and lung). Label 0 therefore only appears where no
real slice was given (e.g. masks sampled from the shape model). `heart_labels` maps a condition map back
to the segmentation mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data.types import NUM_CLASSES

MAX_FIT_PIXELS = 200_000  # background pixels the cut points are fitted on (a seeded random subset above it)


@dataclass(frozen=True)
class TissueClasses:
    """K intensity classes of the background, defined by K - 1 ascending cut points."""

    thresholds: tuple[float, ...]
    smooth_px: float = 1.0

    @property
    def n_classes(self) -> int:
        return len(self.thresholds) + 1

    @property
    def n_labels(self) -> int:
        """Labels of a condition map: the heart's plus one per tissue class."""
        return NUM_CLASSES + self.n_classes

    @classmethod
    def fit(cls, masks: np.ndarray, images: np.ndarray, n_classes: int, *, smooth_px: float = 1.0,
            seed: int = 0) -> "TissueClasses":
        """Cut points from the background pixels of these (training) slices only."""
        if n_classes < 2:
            raise ValueError(f"tissue_classes: expected >= 2 classes, got {n_classes}")
        background = _smoothed(images, smooth_px)[np.asarray(masks) == 0]
        if background.size < n_classes:
            raise ValueError(f"tissue classes: {background.size} background pixels cannot make {n_classes} classes")
        rng = np.random.default_rng(seed)
        if background.size > MAX_FIT_PIXELS:
            background = rng.choice(background, MAX_FIT_PIXELS, replace=False)
        centres = kmeans_1d(background, n_classes)
        return cls(tuple(float(t) for t in (centres[1:] + centres[:-1]) / 2), float(smooth_px))

    def label(self, masks: np.ndarray, images: np.ndarray) -> np.ndarray:
        """(N, H, W) condition map: heart labels kept, background -> NUM_CLASSES + tissue class."""
        masks = np.asarray(masks)
        images = np.asarray(images, dtype=np.float32)
        if images.shape != masks.shape:
            raise ValueError(f"tissue classes: images {images.shape} must have the masks' shape {masks.shape}")
        classes = np.digitize(_smoothed(images, self.smooth_px), np.asarray(self.thresholds))
        return np.where(masks == 0, NUM_CLASSES + classes, masks).astype(np.uint8)

    def state(self) -> dict[str, object]:
        return {"thresholds": list(self.thresholds), "smooth_px": self.smooth_px}

    @classmethod
    def from_state(cls, state: dict[str, object]) -> "TissueClasses":
        return cls(tuple(float(t) for t in state["thresholds"]), float(state["smooth_px"]))


def heart_labels(conditions: np.ndarray) -> np.ndarray:
    """The segmentation mask of a condition map: tissue classes are background."""
    conditions = np.asarray(conditions)
    return np.where(conditions >= NUM_CLASSES, 0, conditions).astype(np.uint8)


def kmeans_1d(x: np.ndarray, k: int, iters: int = 100) -> np.ndarray:
    """Lloyd's k-means in 1-D from quantile starts (deterministic); ascending centres."""
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    centres = np.quantile(x, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        cuts = np.searchsorted(x, (centres[1:] + centres[:-1]) / 2)
        groups = np.split(x, cuts)
        new = np.array([g.mean() if g.size else c for g, c in zip(groups, centres)])
        if np.allclose(new, centres, atol=1e-7):
            break
        centres = new
    return np.sort(centres)


def _smoothed(images: np.ndarray, sigma: float) -> np.ndarray:
    """In-plane Gaussian smoothing so that noise does not speckle the classes."""
    images = np.asarray(images, dtype=np.float32)
    if sigma <= 0:
        return images
    return ndimage.gaussian_filter(images, sigma=(0,) * (images.ndim - 2) + (sigma, sigma), mode="nearest")
