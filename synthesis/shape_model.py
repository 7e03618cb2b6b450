"""A statistical shape model of whole label stacks, for the `sampled` mask source.

PCA of clipped signed distance maps (SDMs) of three nested shapes per stack: the LV cavity, the epicardium
(LV + MYO) and the whole heart (+ RV), so the RV (heart minus epicardium) lies against the septum by
construction. SDMs interpolate smoothly, so stacks with different slice counts are resampled to a fixed
number of slices (and a coarse in-plane grid) before the PCA and back afterwards. Stacks are centred on the
heart first, so the modes describe shape and size rather than where the heart sat in the crop. Labels are
rebuilt so the myocardium always walls in the cavity; everything else is left to the plausibility filter.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

BG, RV, MYO, LV = 0, 1, 2, 3


@dataclass
class ShapeModel:
    mean: np.ndarray  # (D,) mean SDM vector
    components: np.ndarray  # (K, D) orthonormal modes
    std: np.ndarray  # (K,) standard deviation along each mode
    n_slices: int  # slices of the model grid
    grid: int  # in-plane side of the model grid
    clip: float  # SDM clip (model-grid pixels)

    @classmethod
    def fit(cls, masks: list[np.ndarray], *, n_components: int = 8, n_slices: int = 12, grid: int = 64,
            clip: float = 12.0) -> "ShapeModel":
        """Fit on (S, H, W) label stacks sharing one in-plane size (the data stage's crop)."""
        if len(masks) < 2:
            raise ValueError(f"masks: the shape model needs at least 2 stacks, got {len(masks)}")
        sizes = {m.shape[1:] for m in masks}
        if len(sizes) != 1:
            raise ValueError(f"masks: expected one in-plane size (the preprocessing crop), got {sorted(sizes)}")
        data = np.stack([_encode(m, n_slices, grid, clip).ravel() for m in masks])
        mean = data.mean(axis=0)
        centred = data - mean
        # PCA through the small (n x n) Gram matrix: far cheaper than an SVD of the (n x D) data when n << D.
        eigval, eigvec = np.linalg.eigh(centred.astype(np.float64) @ centred.T.astype(np.float64))
        k = min(n_components, len(masks) - 1)
        eigval, eigvec = np.maximum(eigval[::-1][:k], 1e-12), eigvec[:, ::-1][:, :k]
        components = (eigvec.T @ centred) / np.sqrt(eigval)[:, None]
        std = np.sqrt(eigval / (len(masks) - 1))
        return cls(mean=mean.astype(np.float32), components=components.astype(np.float32),
                   std=std.astype(np.float32), n_slices=n_slices, grid=grid, clip=clip)

    def sample(self, rng: np.random.Generator, *, n_slices: int, size: tuple[int, int],
               truncation: float = 2.0) -> np.ndarray:
        """One (n_slices, *size) uint8 label stack; mode weights are standard normal, truncated at +-`truncation`."""
        z = np.clip(rng.standard_normal(len(self.std)), -truncation, truncation)
        sdm = (self.mean + (z * self.std) @ self.components).reshape(3, self.n_slices, self.grid, self.grid)
        return _decode(sdm, n_slices, size)


def _encode(mask: np.ndarray, n_slices: int, grid: int, clip: float) -> np.ndarray:
    """(S, H, W) labels -> (3, n_slices, grid, grid) clipped SDMs of LV, epicardium and whole heart, centred on
    the LV + MYO centroid."""
    heart = np.isin(mask, (MYO, LV))
    h, w = mask.shape[1:]
    if heart.any():
        cy, cx = np.argwhere(heart)[:, 1:].mean(axis=0)
        mask = ndimage.shift(mask, (0, (h - 1) / 2 - cy, (w - 1) / 2 - cx), order=0, mode="constant", cval=BG)
    mask = ndimage.zoom(mask, (1, grid / h, grid / w), order=0)
    shapes = (mask == LV, np.isin(mask, (MYO, LV)), mask > BG)
    sdm = np.stack([[_sdm(sl) for sl in shape] for shape in shapes])
    return np.clip(_resample_slices(sdm, n_slices), -clip, clip).astype(np.float32)


def _decode(sdm: np.ndarray, n_slices: int, size: tuple[int, int]) -> np.ndarray:
    """Inverse of `_encode` (up to the centring): SDMs -> labels at `n_slices` x `size`."""
    sdm = _resample_slices(sdm, n_slices)
    sdm = ndimage.zoom(sdm, (1, 1, size[0] / sdm.shape[2], size[1] / sdm.shape[3]), order=1)
    lv, epi, heart = sdm < 0
    wall = ndimage.generate_binary_structure(3, 1)
    wall[0] = wall[2] = False  # in-plane erosion only
    lv &= ndimage.binary_erosion(epi, wall, iterations=2)  # the cavity always has a wall around it
    rv = ndimage.binary_opening(heart & ~epi, wall, iterations=2)  # drop slivers where heart and epi disagree
    out = np.zeros(lv.shape, np.uint8)
    out[rv] = RV
    out[epi] = MYO
    out[lv] = LV
    return out


def _sdm(region: np.ndarray) -> np.ndarray:
    """Signed distance (pixels), negative inside; an absent shape is far away everywhere."""
    if not region.any():
        return np.full(region.shape, float(max(region.shape)), np.float32)
    return (ndimage.distance_transform_edt(~region) - ndimage.distance_transform_edt(region)).astype(np.float32)


def _resample_slices(a: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation along axis 1 to n slices, end slices kept in place."""
    pos = np.linspace(0, a.shape[1] - 1, n)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, a.shape[1] - 1)
    frac = (pos - lo)[None, :, None, None]
    return a[:, lo] * (1 - frac) + a[:, hi] * frac
