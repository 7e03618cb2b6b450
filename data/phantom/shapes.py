"""Drawing primitives shared by the heart, the torso and the scanner: radial functions on a fixed theta
grid (smooth non-circular outlines), soft edges (anti-aliasing by area fraction), blobs, smooth noise."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

N_THETA = 512  # samples of a radial function over one turn
THETA = np.linspace(0.0, 2.0 * np.pi, N_THETA, endpoint=False)  # its angles (rad)
FOURIER_AMP_DRAW = (0.3, 1.0)  # each outline harmonic gets this fraction of its nominal amplitude, drawn
MIN_SEMI_AXIS_MM = 1.0  # a shrunk blob keeps at least this semi-axis (mm)
_EPS = 1e-9  # keeps the normalised radius and its gradient off zero at a blob's centre


def draw(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    """One uniform draw from a (low, high) range: every prior in the phantom is such a range."""
    return float(rng.uniform(*lo_hi))


def fourier(rng: np.random.Generator, amps: tuple[float, ...], k0: int = 2) -> np.ndarray:
    """1 + sum_k a_k cos(k theta + phi_k) on the theta grid: a smooth, random, non-circular outline."""
    out = np.ones(N_THETA)
    for k, amp in enumerate(amps, start=k0):
        out += rng.uniform(*FOURIER_AMP_DRAW) * amp * np.cos(k * THETA + rng.uniform(0, 2 * np.pi))
    return out


def bump(centre: float, width: float) -> np.ndarray:
    """cos^2 bump on the theta grid, 1 at `centre`, 0 beyond +-width (radians)."""
    d = np.angle(np.exp(1j * (THETA - centre)))
    return np.where(np.abs(d) < width, np.cos(0.5 * np.pi * d / width) ** 2, 0.0)


def lookup(table: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Periodic linear interpolation of a radial function at angles `theta` (radians, any range)."""
    x = (theta * (N_THETA / (2 * np.pi))) % N_THETA
    i = x.astype(np.int32)
    f = x - i
    return table[i] * (1 - f) + table[(i + 1) % N_THETA] * f


def soft(d: np.ndarray, px: float) -> np.ndarray:
    """Area fraction of a pixel inside a shape, from the signed distance d (mm, > 0 outside)."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation (filtered in k-space: fast)."""
    white = rng.standard_normal(shape)
    fx = np.fft.fftfreq(shape[0])[:, None]
    fy = np.fft.rfftfreq(shape[1])[None, :]
    spec = np.fft.rfft2(white) * np.exp(-2 * (np.pi * sigma_px) ** 2 * (fx ** 2 + fy ** 2))
    out = np.fft.irfft2(spec, s=shape)
    return out / (out.std() + 1e-12)


@dataclass
class Ellipse:
    """A smooth star-shaped blob: ellipse (mm, scene frame) times a radial perturbation."""

    c: tuple[float, float]
    a: float
    b: float
    rot: float = 0.0
    shape: np.ndarray | None = None
    power: float = 2.0  # > 2: a squarer superellipse

    def grown(self, t: float) -> "Ellipse":
        """The same blob with both semi-axes grown by t mm (negative: shrunk), e.g. a wall around it."""
        return Ellipse(self.c, max(self.a + t, MIN_SEMI_AXIS_MM), max(self.b + t, MIN_SEMI_AXIS_MM), self.rot,
                       self.shape, self.power)

    def sd(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Signed distance (mm, > 0 outside), first order: (rho_n - r(theta)) / |grad rho_n|."""
        du, dv = u - self.c[0], v - self.c[1]
        cr, sr = math.cos(self.rot), math.sin(self.rot)
        p, q = cr * du + sr * dv, -sr * du + cr * dv
        pa, qb = p / self.a, q / self.b
        if self.power == 2.0:
            rho = np.sqrt(pa * pa + qb * qb) + _EPS
            grad = np.sqrt((pa / self.a) ** 2 + (qb / self.b) ** 2) / rho + _EPS
        else:
            e = self.power
            ap, aq = np.abs(pa) ** (e - 1), np.abs(qb) ** (e - 1)
            rho = (ap * np.abs(pa) + aq * np.abs(qb)) ** (1 / e) + _EPS
            grad = np.sqrt((ap / self.a) ** 2 + (aq / self.b) ** 2) * rho ** (1 - e) + _EPS
        r = 1.0 if self.shape is None else lookup(self.shape, np.arctan2(qb, pa))
        return (rho - r) / grad

    @property
    def radius(self) -> float:
        """Bounding radius (mm): how far from `c` painting must look."""
        return max(self.a, self.b) * (1.0 if self.shape is None else float(self.shape.max()))
