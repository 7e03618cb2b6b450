"""The scanner: named styles, per-patient acquisition settings, tissue signal levels, and the imaging
chain (coil bias, bSSFP banding, k-space truncation and taper, complex noise, integer magnitude)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np

from data.phantom.shapes import Ellipse, draw


@dataclass(frozen=True)
class ScannerStyle:
    """How one kind of scanner/protocol renders the same anatomy. Ranges are (low, high), drawn per patient."""

    name: str
    pixel_mm: tuple[float, float]  # in-plane spacing
    slice_spacing_mm: tuple[float, float]
    slice_thickness_mm: tuple[float, float]  # <= spacing: ACDC-like gaps between slices
    fov_mm: tuple[float, float]  # field of view along the long (Y) side; X is 78-95 % of it
    readout_fraction: tuple[float, float]  # fraction of k-space acquired along the readout axis
    phase_fraction: tuple[float, float]  # ... and along the phase-encoding axis (lower: blurrier)
    k_taper: float  # Tukey taper of the k-space window: 0 = hard cut (ringing), 1 = smooth (blur)
    noise: tuple[float, float]  # complex noise sigma relative to blood signal
    bias: float  # strength of the smooth coil sensitivity field
    banding: float  # depth of bSSFP off-resonance bands (0 = none)
    scale: tuple[float, float]  # blood intensity in the stored integers
    zero_border: float  # probability of zero-filled (resliced) borders
    texture: float  # multiplier of tissue texture amplitudes
    contrast: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # tissue / blood signal


def _contrast(**overrides: tuple[float, float]) -> Mapping[str, tuple[float, float]]:
    """Tissue signal ranges relative to blood (bSSFP: T2/T1 contrast), with a style's overrides."""
    base = {
        "blood": (0.92, 1.0), "myocardium": (0.24, 0.32), "fat": (0.85, 1.05), "muscle": (0.2, 0.28),
        "liver": (0.3, 0.42), "spleen": (0.45, 0.6), "lung": (0.03, 0.06), "marrow": (0.35, 0.5),
        "organ": (0.18, 0.75),  # bowel/stomach content: a range, each loop draws its own
    }
    base.update(overrides)
    return MappingProxyType(base)


STYLES: Mapping[str, ScannerStyle] = MappingProxyType({
    # 1.5 T Siemens-like bSSFP: crisp (little k-space filtering, visible ringing), clean, moderate bias.
    "siemens_like": ScannerStyle(
        name="siemens_like", pixel_mm=(1.3, 1.65), slice_spacing_mm=(9.0, 10.0), slice_thickness_mm=(6.0, 8.0),
        fov_mm=(300.0, 400.0), readout_fraction=(0.88, 1.0), phase_fraction=(0.62, 0.8), k_taper=0.15,
        noise=(0.01, 0.022), bias=0.35, banding=0.85, scale=(280.0, 650.0), zero_border=0.6, texture=1.0,
        contrast=_contrast()),
    # Philips-like: finer pixels (interpolated), smoother k-space filter, strong surface-coil bias,
    # brighter fat and a little less blood-myocardium contrast, large integer range.
    "philips_like": ScannerStyle(
        name="philips_like", pixel_mm=(1.2, 1.4), slice_spacing_mm=(8.0, 10.0), slice_thickness_mm=(7.0, 8.0),
        fov_mm=(300.0, 380.0), readout_fraction=(0.7, 0.85), phase_fraction=(0.55, 0.72), k_taper=0.5,
        noise=(0.014, 0.028), bias=0.6, banding=0.5, scale=(700.0, 1800.0), zero_border=0.2, texture=0.8,
        contrast=_contrast(myocardium=(0.3, 0.38), fat=(1.0, 1.3), liver=(0.36, 0.5), muscle=(0.24, 0.32))),
    # Low-field / older scanner: coarse pixels, thick slices, noisy, flatter contrast, 8-bit range.
    "lowfield_noisy": ScannerStyle(
        name="lowfield_noisy", pixel_mm=(1.6, 1.85), slice_spacing_mm=(10.0, 10.0), slice_thickness_mm=(8.0, 10.0),
        fov_mm=(320.0, 400.0), readout_fraction=(0.85, 1.0), phase_fraction=(0.6, 0.75), k_taper=0.3,
        noise=(0.035, 0.06), bias=0.3, banding=0.15, scale=(120.0, 230.0), zero_border=0.3, texture=1.2,
        contrast=_contrast(myocardium=(0.36, 0.46), fat=(0.7, 0.9), liver=(0.4, 0.52), muscle=(0.32, 0.4),
                           lung=(0.04, 0.07))),
})


def scanner_style(name: str) -> ScannerStyle:
    """The style called `name`; a ValueError naming the choices otherwise (a typo in a config)."""
    if name not in STYLES:
        raise ValueError(f"style: unknown scanner style {name!r}; expected one of {sorted(STYLES)} or None")
    return STYLES[name]


# Relative amplitude of (fine, coarse) texture per tissue, before the style's `texture` multiplier.
TEXTURE = {
    "blood": (0.04, 0.05), "myocardium": (0.06, 0.05), "fat": (0.06, 0.1), "muscle": (0.1, 0.08),
    "liver": (0.06, 0.12), "spleen": (0.05, 0.06), "lung": (0.5, 0.4), "marrow": (0.15, 0.1),
    "organ": (0.12, 0.1),
}
RV_BLOOD = (0.88, 1.0)  # RV blood signal relative to LV blood (slower flow), drawn

# Geometry of the acquisition, drawn per patient unless fixed.
MATRIX_MULTIPLE = 8  # matrix sizes are multiples of this (px)
SHORT_SIDE = (0.78, 0.95)  # short side of the field of view relative to the long one
PORTRAIT_PROBABILITY = 0.85  # long side along Y, like most ACDC volumes
READOUT_ALONG_X_PROBABILITY = 0.5  # else the readout (less truncated) axis is Y
# Coil sensitivity: Gaussian bumps on the body outline (angle about its centre in units of pi, width
# in mm, gain), field = 1 + COIL_GAIN x bias x gain x bump, times a low-order polynomial drift.
ANTERIOR_COILS, ANTERIOR_COIL = (2, 4), ((0.55, 1.45), (50, 110), (0.4, 1.0))  # count (high exclusive)
POSTERIOR_COIL_PROBABILITY, POSTERIOR_COIL = 0.6, ((-0.3, 0.3), (70, 120), (0.2, 0.5))  # weaker, behind
COIL_GAIN = 3.0
POLY_TERMS, POLY_STRENGTH = 5, 0.3  # x, y, xy, x^2, y^2 with N(0, 1) weights, times bias x this
# bSSFP off-resonance banding: dark bands where the phase crosses pi, away from the centre of the image
# (coordinates: [-1, 1] over each side).
BANDING_PROBABILITY = 0.85
BAND_CENTRE = (-0.3, 0.3)  # centre of the off-resonance pattern, each axis
BAND_RADIUS = (0.75, 1.05)  # radius r0 where the phase reaches pi
BAND_POWER = (3.0, 6.0)  # phase = pi (r / r0)^q: higher q, sharper growth towards the edge
BAND_TILT = 0.3  # amplitude of the phase's asymmetric terms (rad)
BAND_DEPTH = (0.6, 1.0)  # fraction of the style's `banding` depth
BAND_WIDTH_RAD = (0.12, 0.3)  # Gaussian width of a band in phase
BAND_START, BAND_RAMP = 0.85, 4  # bands appear from r = 0.85 r0, fully from 0.85 r0 + r0 / 4
# Zero-filled borders of resliced images: the kept rectangle, tilted, shrunk by a margin per side.
ZERO_BORDER_TILT_DEG, ZERO_BORDER_MARGIN = (-8, 8), (0.0, 0.08)  # margin: fraction of each side


def _tukey(n: int, keep: float, taper: float) -> np.ndarray:
    """k-space window over fftfreq order: 1 in the centre, cos taper, 0 beyond the acquired fraction."""
    f = np.abs(np.fft.fftfreq(n)) * 2.0 / keep  # 1 at the edge of the acquired region
    w = np.ones(n)
    if taper > 0:
        edge = f > 1 - taper
        w[edge] = 0.5 * (1 + np.cos(np.pi * (f[edge] - (1 - taper)) / taper))
    w[f > 1] = 0.0
    return w


def _coil(rng: np.random.Generator, ranges) -> tuple[float, float, float]:
    """One coil element: (angle on the body outline (rad), width (mm), gain), drawn from `ranges`."""
    angle_pi, width_mm, gain = ranges
    return draw(rng, angle_pi) * np.pi, draw(rng, width_mm), draw(rng, gain)


@dataclass
class Acquisition:
    """Per-patient scanner settings drawn from a style."""

    style: ScannerStyle
    shape: tuple[int, int]
    spacing: tuple[float, float, float]
    thickness: float
    window: np.ndarray
    noise: float
    scale: float
    bias_terms: tuple
    band: tuple | None
    zero_border: tuple | None

    @classmethod
    def draw(cls, rng: np.random.Generator, style: ScannerStyle) -> "Acquisition":
        px = draw(rng, style.pixel_mm)
        fov = draw(rng, style.fov_mm)
        long = int(round(fov / px / MATRIX_MULTIPLE) * MATRIX_MULTIPLE)
        short = int(round(long * draw(rng, SHORT_SIDE) / MATRIX_MULTIPLE) * MATRIX_MULTIPLE)
        shape = (short, long) if rng.random() < PORTRAIT_PROBABILITY else (long, short)
        spacing = (px, px, draw(rng, style.slice_spacing_mm))
        thickness = min(draw(rng, style.slice_thickness_mm), spacing[2])
        ro, pe = draw(rng, style.readout_fraction), draw(rng, style.phase_fraction)
        fx, fy = (ro, pe) if rng.random() < READOUT_ALONG_X_PROBABILITY else (pe, ro)
        window = np.outer(_tukey(shape[0], fx, style.k_taper), _tukey(shape[1], fy, style.k_taper))
        # Coil elements: mostly an anterior array on the chest wall, sometimes a weaker posterior one;
        # (angle about the body centre in the image frame, width in mm, amplitude).
        coils = [_coil(rng, ANTERIOR_COIL) for _ in range(int(rng.integers(*ANTERIOR_COILS)))]
        if rng.random() < POSTERIOR_COIL_PROBABILITY:
            coils.append(_coil(rng, POSTERIOR_COIL))
        poly = rng.normal(0, 1, size=POLY_TERMS)
        band = None
        if style.banding > 0 and rng.random() < BANDING_PROBABILITY:
            band = (draw(rng, BAND_CENTRE), draw(rng, BAND_CENTRE), draw(rng, BAND_RADIUS), draw(rng, BAND_POWER),
                    rng.uniform(0, 2 * np.pi), style.banding * draw(rng, BAND_DEPTH), draw(rng, BAND_WIDTH_RAD))
        zb = None
        if rng.random() < style.zero_border:
            zb = (math.radians(draw(rng, ZERO_BORDER_TILT_DEG)), draw(rng, ZERO_BORDER_MARGIN),
                  draw(rng, ZERO_BORDER_MARGIN))
        return cls(style, shape, spacing, thickness, window, draw(rng, style.noise), draw(rng, style.scale),
                   (coils, poly), band, zb)

    def fields(self, body: "Ellipse", origin: np.ndarray, angle: float, heart: np.ndarray) -> np.ndarray:
        """Smooth multiplicative field: coil sensitivities x low-order polynomial x bSSFP banding.

        Coils sit on the body outline (scene frame, mm); the field is 1 at the heart.
        """
        nx, ny = self.shape
        xs = (np.arange(nx) + 0.5) * self.spacing[0]
        ys = (np.arange(ny) + 0.5) * self.spacing[1]
        c, s_ = math.cos(angle), math.sin(angle)

        def to_image(p):  # scene (u, v) -> image (x, y) in mm
            return origin[0] + c * p[0] - s_ * p[1], origin[1] + s_ * p[0] + c * p[1]

        coils, poly = self.bias_terms
        s = self.style.bias
        sens = np.ones((nx, ny))
        for ang, w, amp in coils:
            a = ang - body.rot
            p = np.array(body.c) + np.array([[math.cos(body.rot), -math.sin(body.rot)],
                                             [math.sin(body.rot), math.cos(body.rot)]]) @ [body.a * math.cos(a),
                                                                                           body.b * math.sin(a)]
            cx, cy = to_image(p)
            d2 = (xs[:, None] - cx) ** 2 + (ys[None, :] - cy) ** 2
            sens = sens + COIL_GAIN * s * amp * np.exp(-d2 / (2 * w * w))
        x = np.linspace(-1, 1, nx)[:, None]
        y = np.linspace(-1, 1, ny)[None, :]
        field_ = sens * np.exp(s * POLY_STRENGTH * (poly[0] * x + poly[1] * y + poly[2] * x * y + poly[3] * x * x
                                          + poly[4] * y * y))
        hx, hy = to_image(heart)
        i = min(max(int(hx / self.spacing[0]), 0), nx - 1)
        j = min(max(int(hy / self.spacing[1]), 0), ny - 1)
        field_ /= field_[i, j]
        if self.band is not None:
            bx, by, r0, q, phi0, depth, width = self.band
            r = np.sqrt((x - bx) ** 2 + ((y - by) * ny / nx) ** 2) / r0
            phase = np.pi * r ** q + BAND_TILT * math.sin(phi0) * (x * y) + BAND_TILT * math.cos(phi0) * (x - y) ** 2
            off = np.angle(np.exp(1j * (phase - np.pi)))  # bSSFP signal nulls where off-resonance = pi
            field_ *= 1 - depth * np.exp(-off ** 2 / (2 * width ** 2)) * np.clip((r - BAND_START) * BAND_RAMP, 0, 1)
        return field_

    def acquire(self, img: np.ndarray, field_: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Truncate/taper k-space, add complex noise there, and return the magnitude as integers."""
        k = np.fft.fft2(img * field_) * self.window
        sigma = self.noise * math.sqrt(img.size / max(float((self.window ** 2).sum()), 1.0))
        noise = (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)) * (self.window > 0)
        k += noise * sigma * math.sqrt(img.size)
        out = np.abs(np.fft.ifft2(k)) * self.scale
        out = np.rint(out)
        if self.zero_border is not None:
            ang, mx, my = self.zero_border
            nx, ny = self.shape
            x = (np.arange(nx) - nx / 2)[:, None] / nx
            y = (np.arange(ny) - ny / 2)[None, :] / ny
            xr = math.cos(ang) * x + math.sin(ang) * y * ny / nx
            yr = -math.sin(ang) * x * nx / ny + math.cos(ang) * y
            out[(np.abs(xr) > 0.5 - mx) | (np.abs(yr) > 0.5 - my)] = 0.0
        return np.clip(out, 0, None)


def tissue_levels(rng: np.random.Generator, style: ScannerStyle) -> dict[str, float]:
    """One patient's tissue signal levels (relative to blood), drawn from the style's contrast ranges."""
    levels = {name: draw(rng, rng_range) for name, rng_range in style.contrast.items() if name != "organ"}
    levels["blood_rv"] = levels["blood"] * draw(rng, RV_BLOOD)
    levels["organ_lo"], levels["organ_hi"] = style.contrast["organ"]
    levels["organ"] = 0.5 * (levels["organ_lo"] + levels["organ_hi"])
    return levels
