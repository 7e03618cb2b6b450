"""One slice being painted in the scene frame (mm), tissue by tissue, before the scanner sees it."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from data.phantom.shapes import Ellipse, smooth_noise, soft


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
        self.fine = smooth_noise(rng, shape, 0.9)
        self.coarse = smooth_noise(rng, shape, 6.0)
        self.full = (slice(None), slice(None))

    def box(self, centre: tuple[float, float], radius: float) -> tuple[slice, slice]:
        """Pixel box around a scene point (mm); the whole image where it would be larger."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        x = c * centre[0] - s * centre[1] + self.origin[0]
        y = s * centre[0] + c * centre[1] + self.origin[1]
        i0 = max(int((x - radius) / self.spacing[0]) - 2, 0)
        i1 = min(int((x + radius) / self.spacing[0]) + 3, self.shape[0])
        j0 = max(int((y - radius) / self.spacing[1]) - 2, 0)
        j1 = min(int((y + radius) / self.spacing[1]) + 3, self.shape[1])
        return slice(i0, max(i0, i1)), slice(j0, max(j0, j1))

    def value(self, tissue: str, box, level: float | None = None) -> np.ndarray:
        mean = self.tissue[tissue] if level is None else level
        fine, coarse = self.texture[tissue]
        return mean * (1.0 + fine * self.fine[box] + coarse * self.coarse[box])

    def paint(self, alpha: np.ndarray, tissue: str, box=None, level: float | None = None) -> None:
        box = self.full if box is None else box
        target = self.img[box]
        target += alpha * (self.value(tissue, box, level) - target)

    def blob(self, e: Ellipse, tissue: str, level: float | None = None, clip: np.ndarray | None = None) -> None:
        box = self.box(e.c, e.radius + 2 * self.px)
        if box[0].stop <= box[0].start or box[1].stop <= box[1].start:
            return
        alpha = soft(e.sd(self.u[box], self.v[box]), self.px)
        if clip is not None:
            alpha = alpha * clip[box]
        self.paint(alpha, tissue, box, level)
