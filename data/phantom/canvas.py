"""One slice being painted in the scene frame (mm), tissue by tissue, before the scanner sees it."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from data.phantom.shapes import Ellipse, smooth_noise, soft

FINE_TEXTURE_PX = 0.9  # correlation length (Gaussian sigma, px) of the fine tissue texture
COARSE_TEXTURE_PX = 6.0  # ... and of the coarse one (also warps organ edges and the diaphragm)
BOX_MARGIN_PX = 2  # pixels added around a bounding box so soft edges are not cut
BLOB_PAD_PX = 2  # a blob's box reaches this many pixels beyond its bounding radius


class Canvas:
    """A slice being painted: intensities composited by area fraction, in a scene frame (mm)."""

    def __init__(self, shape: tuple[int, int], spacing: tuple[float, float], origin: np.ndarray, angle: float,
                 tissue: Mapping[str, float], texture: Mapping[str, tuple[float, float]], rng: np.random.Generator):
        self.shape, self.spacing = shape, spacing
        self.px = 0.5 * (spacing[0] + spacing[1])
        self.origin, self.angle = origin, angle
        x = (np.arange(shape[0]) + 0.5) * spacing[0] - origin[0]
        y = (np.arange(shape[1]) + 0.5) * spacing[1] - origin[1]
        c, s = math.cos(angle), math.sin(angle)
        self.u = c * x[:, None] + s * y[None, :]
        self.v = -s * x[:, None] + c * y[None, :]
        self.img = np.zeros(shape)
        self.tissue, self.texture = tissue, texture
        self.fine = smooth_noise(rng, shape, FINE_TEXTURE_PX)
        self.coarse = smooth_noise(rng, shape, COARSE_TEXTURE_PX)
        self.full = (slice(None), slice(None))

    def box(self, centre: tuple[float, float], radius: float) -> tuple[slice, slice]:
        """Pixel box around a scene point (mm); the whole image where it would be larger."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = c * centre[0] - s * centre[1] + self.origin[0]
        y = s * centre[0] + c * centre[1] + self.origin[1]
        i0 = max(int((x - radius) / self.spacing[0]) - BOX_MARGIN_PX, 0)
        i1 = min(int((x + radius) / self.spacing[0]) + BOX_MARGIN_PX + 1, self.shape[0])
        j0 = max(int((y - radius) / self.spacing[1]) - BOX_MARGIN_PX, 0)
        j1 = min(int((y + radius) / self.spacing[1]) + BOX_MARGIN_PX + 1, self.shape[1])
        return slice(i0, max(i0, i1)), slice(j0, max(j0, j1))

    def value(self, tissue: str, box, level: float | None = None) -> np.ndarray:
        """A tissue's signal in `box`: its level (or `level`) modulated by fine and coarse texture."""
        mean = self.tissue[tissue] if level is None else level
        fine, coarse = self.texture[tissue]
        return mean * (1.0 + fine * self.fine[box] + coarse * self.coarse[box])

    def paint(self, alpha: np.ndarray, tissue: str, box=None, level: float | None = None) -> None:
        """Composite a tissue over what is there, by area fraction alpha (later paint covers earlier)."""
        box = self.full if box is None else box
        target = self.img[box]
        target += alpha * (self.value(tissue, box, level) - target)

    def blob(self, e: Ellipse, tissue: str, level: float | None = None, clip: np.ndarray | None = None) -> None:
        """Paint a blob, optionally only where `clip` (a full-image fraction) allows it."""
        box = self.box(e.c, e.radius + BLOB_PAD_PX * self.px)
        if box[0].stop <= box[0].start or box[1].stop <= box[1].start:
            return
        alpha = soft(e.sd(self.u[box], self.v[box]), self.px)
        if clip is not None:
            alpha = alpha * clip[box]
        self.paint(alpha, tissue, box, level)
