"""The embedded default dataset: a short-axis cine cardiac MR phantom written in the ACDC layout.

Why it exists: the whole pipeline must run (and be tested) without any real data, and the numbers it
produces there should mean something, so the phantom imitates what a segmentation network sees in ACDC
rather than drawing circles on black:

* anatomy, in millimetres: a truncated-ellipsoid LV (endo- and epicardium as smooth non-circular
  radial functions, papillary muscles and trabeculae as dark structures labelled as cavity), an RV
  crescent hinged on the septum that vanishes before the apex, LV outflow at the base, atria above
  it, pericardial fat, and a torso around it (skin fat, chest-wall muscle, lungs with vessels,
  diaphragm, liver, stomach, bowel, spleen, aorta, spine, sometimes an arm);
* physiology: five ACDC-like groups (NOR, DCM, HCM, MINF, RV) with their volumes, wall thickness
  and ejection fractions; ES keeps myocardial volume (the wall thickens) and shortens from the base;
* acquisition: anti-aliased rendering (area fractions), through-plane partial volume over the slice
  thickness, k-space truncation with a taper (blur + Gibbs ringing), smooth coil bias, bSSFP
  off-resonance banding, complex Gaussian noise (Rician magnitude), integer intensities, and
  zero-filled borders, with the mix set by a named scanner style (`STYLES`).

Everything is drawn from one seed: patient i depends only on (seed, i), so a 6-patient phantom is a
prefix of a 24-patient one, and forcing a style changes the scanner but not the anatomy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from data.io import write_nifti, write_text

# Bump whenever the generator's output changes for a given seed; caches keyed on the phantom should
# include it (pipeline.run keys the phantom stage on patients and seed only).
PHANTOM_VERSION = 1
GROUPS: tuple[str, ...] = ("NOR", "DCM", "HCM", "MINF", "RV")
_NT = 512  # samples of a radial function over one turn
_THETA = np.linspace(0.0, 2.0 * np.pi, _NT, endpoint=False)


# --------------------------------------------------------------------------------------------------
# Scanner styles
# --------------------------------------------------------------------------------------------------

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

# Relative amplitude of (fine, coarse) texture per tissue.
_TEXTURE = {
    "blood": (0.04, 0.05), "myocardium": (0.06, 0.05), "fat": (0.06, 0.1), "muscle": (0.1, 0.08),
    "liver": (0.06, 0.12), "spleen": (0.05, 0.06), "lung": (0.5, 0.4), "marrow": (0.15, 0.1),
    "organ": (0.12, 0.1),
}

# Group physiology, mm and fractions: LV cavity radius R and length L at ED, wall W, ejection fraction,
# longitudinal shortening at ES, RV crescent thickness H and RV ejection fraction. Ranges follow ACDC's
# group statistics (LVEDV ~ 130 NOR, ~ 285 DCM, ~ 130 HCM, ~ 170 MINF, ~ 110 RV ml; RVEDV ~ 150-200 ml).
_GROUP_PARAMS = {
    "NOR": dict(R=(24.0, 29.0), L=(80.0, 95.0), W=(6.5, 9.0), EF=(0.55, 0.7), kl=(0.82, 0.9),
                H=(21.0, 30.0), RVEF=(0.45, 0.62)),
    "DCM": dict(R=(32.0, 38.0), L=(95.0, 110.0), W=(5.5, 8.0), EF=(0.13, 0.33), kl=(0.94, 0.98),
                H=(22.0, 32.0), RVEF=(0.2, 0.45)),
    "HCM": dict(R=(22.0, 28.0), L=(76.0, 90.0), W=(10.0, 14.0), EF=(0.62, 0.8), kl=(0.84, 0.92),
                H=(20.0, 28.0), RVEF=(0.5, 0.65)),
    "MINF": dict(R=(27.0, 32.0), L=(85.0, 100.0), W=(7.5, 10.0), EF=(0.25, 0.44), kl=(0.92, 0.97),
                 H=(20.0, 28.0), RVEF=(0.4, 0.6)),
    "RV": dict(R=(22.0, 26.0), L=(76.0, 90.0), W=(5.5, 8.0), EF=(0.45, 0.62), kl=(0.84, 0.92),
               H=(30.0, 40.0), RVEF=(0.18, 0.38)),
}


# --------------------------------------------------------------------------------------------------
# Small geometric helpers
# --------------------------------------------------------------------------------------------------

def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _fourier(rng: np.random.Generator, amps: tuple[float, ...], k0: int = 2) -> np.ndarray:
    """1 + sum_k a_k cos(k theta + phi_k) on the theta grid: a smooth, random, non-circular outline."""
    out = np.ones(_NT)
    for k, amp in enumerate(amps, start=k0):
        out += rng.uniform(0.3, 1.0) * amp * np.cos(k * _THETA + rng.uniform(0, 2 * np.pi))
    return out


def _bump(centre: float, width: float) -> np.ndarray:
    """cos^2 bump on the theta grid, 1 at `centre`, 0 beyond +-width (radians)."""
    d = np.angle(np.exp(1j * (_THETA - centre)))
    return np.where(np.abs(d) < width, np.cos(0.5 * np.pi * d / width) ** 2, 0.0)


def _lookup(table: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Periodic linear interpolation of a radial function at angles `theta` (radians, any range)."""
    x = (theta * (_NT / (2 * np.pi))) % _NT
    i = x.astype(np.int32)
    f = x - i
    return table[i] * (1 - f) + table[(i + 1) % _NT] * f


def _soft(d: np.ndarray, px: float) -> np.ndarray:
    """Area fraction of a pixel inside a shape, from the signed distance d (mm, > 0 outside)."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation (filtered in k-space: fast)."""
    white = rng.standard_normal(shape)
    fx = np.fft.fftfreq(shape[0])[:, None]
    fy = np.fft.rfftfreq(shape[1])[None, :]
    spec = np.fft.rfft2(white) * np.exp(-2 * (np.pi * sigma_px) ** 2 * (fx ** 2 + fy ** 2))
    out = np.fft.irfft2(spec, s=shape)
    return out / (out.std() + 1e-12)


# --------------------------------------------------------------------------------------------------
# The heart
# --------------------------------------------------------------------------------------------------

@dataclass
class _Section:
    """One cut through the heart: radial functions (mm, about the LV centre) on the theta grid."""

    endo: np.ndarray | None = None  # LV cavity outline
    epi: np.ndarray | None = None  # LV epicardium
    rv: np.ndarray | None = None  # outer RV cavity outline
    ref: np.ndarray | None = None  # epicardium the RV wraps around (also where there is no LV)
    atrium: float = 0.0  # radius of an (unlabelled) atrium above the base
    dark: list[tuple[float, float, float]] = field(default_factory=list)  # papillary/trabeculae (theta, rho, r)
    lvot: tuple[float, float] | None = None  # (theta, half-width) of the outflow gap in the basal wall


def _crescent_area(ref: np.ndarray, h: np.ndarray) -> float:
    """Area (mm^2) between the radial functions ref and ref + h."""
    return float(np.sum(ref * h + 0.5 * h * h) * (2 * np.pi / _NT))


class _Heart:
    """Geometry of one patient's ventricles at ED and ES as a function of depth below the ED base."""

    def __init__(self, rng: np.random.Generator, group: str):
        g = _GROUP_PARAMS[group]
        self.group = group
        self.R, self.L, self.W = _u(rng, g["R"]), _u(rng, g["L"]), _u(rng, g["W"])
        self.L_epi = self.L + self.W * rng.uniform(0.7, 1.1)
        self.p = rng.uniform(2.0, 2.8)  # profile fullness: 2 = ellipsoid, larger = blunter apex
        self.ef, self.kl = _u(rng, g["EF"]), _u(rng, g["kl"])
        self.rvef = _u(rng, g["RVEF"])
        self.septum = math.radians(rng.normal(172.0, 10.0))  # direction LV -> RV in the image plane
        # Shapes at base and apex, interpolated in between.
        self.shape = [_fourier(rng, (0.06, 0.03, 0.015)), _fourier(rng, (0.08, 0.04, 0.02))]
        self.shape_es = _fourier(rng, (0.05, 0.03, 0.02, 0.015))
        wall = _fourier(rng, (0.08, 0.05), k0=1)
        if group == "HCM":  # asymmetric septal hypertrophy
            wall = wall * (1 + rng.uniform(0.2, 0.6) * _bump(self.septum, rng.uniform(0.9, 1.5)))
        self.akinesia = np.zeros(_NT)
        self.infarct_depth = (0.0, 1.0)
        if group == "MINF":  # thinned, akinetic infarct sector away from the septum
            centre = self.septum + np.pi + rng.uniform(-1.6, 1.6)
            sector = _bump(centre, math.radians(rng.uniform(45, 80)))
            wall = wall * (1 - rng.uniform(0.35, 0.55) * sector)
            self.akinesia = rng.uniform(0.7, 1.0) * sector
            self.infarct_depth = (rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0))  # along the long axis
        self.wall = wall
        # Radial contraction: continuous-volume value here, tuned to the actual slices by `calibrate`.
        self.kr = math.sqrt(min(0.98, (1 - self.ef) / self.kl))
        # RV crescent: thickness H, angular half-widths towards the anterior/inferior insertions.
        self.H = _u(rng, g["H"])
        self.delta = (math.radians(rng.uniform(65, 90)), math.radians(rng.uniform(55, 80)))
        if group == "RV":
            self.delta = (self.delta[0] * 1.15, self.delta[1] * 1.15)
        self.gamma = rng.uniform(0.4, 0.7)
        self.L_rv = self.L * rng.uniform(0.7, 0.88)
        self.rv_above = rng.uniform(8.0, 18.0)  # RV outflow extends above the LV base
        self.rv_shape = _fourier(rng, (0.1, 0.07, 0.04), k0=1)
        self.rv_wall = rng.uniform(2.5, 4.0)
        grooves = _bump(self.septum + self.delta[0], 0.45) + _bump(self.septum - self.delta[1], 0.45)
        self.fat = rng.uniform(0.0, 1.2) + rng.uniform(2.0, 8.0) * grooves
        self.fat = self.fat + rng.uniform(0.0, 3.0) * _bump(self.septum, 1.0)  # towards the chest wall
        self.fat_shape = _fourier(rng, (0.3, 0.3, 0.2, 0.2, 0.2), k0=3)
        lateral = self.septum + np.pi
        self.pap = [(lateral - math.radians(rng.uniform(35, 55)), rng.uniform(2.5, 4.5)),
                    (lateral + math.radians(rng.uniform(45, 70)), rng.uniform(2.5, 4.5))]
        n_trab = int(rng.integers(3, 10)) * (2 if group in ("DCM", "MINF") else 1)
        self.trab = [(rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 1.8), rng.uniform(0.0, 0.8)) for _ in range(n_trab)]
        self.lvot = (self.septum + math.radians(rng.uniform(35, 65)), math.radians(rng.uniform(14, 24)))
        self.has_lvot = rng.random() < 0.4
        # Drift of the LV centre from base to apex (mm) and twist (rad): the long axis is not
        # exactly perpendicular to the slices and the apex points towards the chest wall.
        self.drift = np.array([rng.uniform(-14, 4), rng.uniform(8, 30)])
        self.twist = math.radians(rng.normal(0, 8))
        self.es_shift = rng.normal(0, 1.5, size=2)

    def _profile(self, x: float) -> float:
        return math.sqrt(1.0 - max(x, 0.0) ** self.p) if x < 1.0 else 0.0

    def _shape(self, zeta: float) -> np.ndarray:
        t = min(max(zeta / self.L, 0.0), 1.0)
        return self.shape[0] * (1 - t) + self.shape[1] * t

    def _ed(self, zeta: float) -> tuple[np.ndarray | None, np.ndarray | None]:
        """ED endo/epi radial functions at depth zeta below the ED base (None where absent)."""
        if zeta < 0 or zeta >= self.L_epi:
            return None, None
        shape = self._shape(zeta)
        wall = self.wall
        lo, hi = self.infarct_depth
        t = zeta / self.L
        if self.group == "MINF" and not lo <= t <= hi:  # the infarct does not span the whole long axis
            wall = self.wall + (1 - self.wall) * min(1.0, min(abs(t - lo), abs(t - hi)) * 6)
        epi = (self.R + self.W * wall) * self._profile(zeta / self.L_epi) * shape
        pe = self._profile(t)
        if pe < 0.05:
            return None, epi
        endo = np.minimum(self.R * pe * shape, epi - 2.5)  # keep at least a thin wall
        return (endo if endo.min() > 0.5 else None), epi

    def _rv_profile(self, z: float, es: bool) -> tuple[np.ndarray, float]:
        """Unscaled crescent thickness over theta and its size factor at depth z below the base.

        Towards its apex the RV narrows in extent as well as thickness (a cone, not a thinning sheet).
        """
        x = max(z, 0.0) / self.L_rv
        taper = math.sqrt(max(0.0, 1 - x ** 2.2))
        size = (1 + 0.15 * (1 - 2 * x)) * taper
        widen = (1 + 0.15 * (1 - 2 * x)) * (0.4 + 0.6 * taper) * (0.93 if es else 1.0)
        d = np.angle(np.exp(1j * (_THETA - self.septum)))
        w = np.minimum(np.where(d >= 0, self.delta[0], self.delta[1]) * widen, math.radians(100))
        prof = np.where(np.abs(d) < w, np.cos(0.5 * np.pi * np.clip(np.abs(d) / w, 0, 1)) ** self.gamma, 0.0)
        return prof * self.rv_shape, self.H * size

    def _es_map(self, zeta: float) -> float:
        """ED depth of the anatomy a scanner-fixed slice at depth zeta cuts at ES: the base descends
        towards the (fixed) apex."""
        return (zeta - (1 - self.kl) * self.L) / self.kl

    def _es_walls(self, endo: np.ndarray, epi: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """ES endo/epicardium from the ED ones at the same anatomy (radial contraction, akinesia)."""
        endo_es = endo * (self.kr + (1 - self.kr) * self.akinesia) * self.shape_es
        # Myocardium is incompressible: keep the wall volume, so the wall thickens.
        epi_es = np.sqrt(endo_es ** 2 + (epi ** 2 - endo ** 2) / self.kl)
        endo_es = np.minimum(endo_es, epi_es - 3.0)
        return (endo_es if endo_es.min() > 0.5 else None), epi_es

    def calibrate(self, zetas: list[float]) -> None:
        """Tune the radial contraction so the LV ejection fraction measured on these (sub-)slices is
        the drawn one: slices 1 cm apart sample base and apex too coarsely for the continuous formula."""
        def area(r):
            return 0.0 if r is None else float(np.mean(r * r))

        ed = sum(area(self._ed(z)[0]) for z in zetas)
        cuts = [self._ed(self._es_map(z)) for z in zetas]
        cuts = [(endo, epi) for endo, epi in cuts if endo is not None]
        if ed <= 0 or not cuts:
            return
        lo, hi = 0.2, 0.995
        for _ in range(25):  # bisection: the ES volume grows with kr
            self.kr = 0.5 * (lo + hi)
            es = sum(area(self._es_walls(endo, epi)[0]) for endo, epi in cuts)
            lo, hi = (self.kr, hi) if es < (1 - self.ef) * ed else (lo, self.kr)

    def section(self, zeta: float, phase: str) -> _Section:
        """The heart at depth zeta (mm below the ED base, scanner-fixed) in phase ED or ES."""
        es = phase == "ES"
        z_ed = self._es_map(zeta) if es else zeta
        endo, epi = self._ed(z_ed)
        if epi is not None and es:
            if endo is not None:
                endo, epi = self._es_walls(endo, epi)
            else:
                epi = epi / math.sqrt(self.kl)
        sec = _Section(endo=endo, epi=epi)
        if epi is None and z_ed < 0:
            sec.atrium = self.R * (0.55 + 0.3 * min(1.0, -z_ed / 10.0))
        base_epi = (self.R + self.W) * self._shape(0.0) * 0.95
        sec.ref = epi if epi is not None else base_epi
        # RV crescent. It contracts radially (its base barely moves in this model): at ES the area of
        # each slice is (1 - RVEF) times the ED area of the same slice, which gives the RV EF exactly.
        if -self.rv_above < zeta < self.L_rv:
            prof, H = self._rv_profile(zeta, es)
            h = H * prof
            if es:
                _, epi0 = self._ed(zeta)
                ref_ed = epi0 if epi0 is not None else base_epi
                prof_ed, H_ed = self._rv_profile(zeta, False)
                target = _crescent_area(ref_ed, H_ed * prof_ed) * (1 - self.rvef) * _NT / (2 * np.pi)
                qa, qb = 0.5 * np.sum(h * h), np.sum(sec.ref * h)
                h = h * ((-qb + math.sqrt(qb * qb + 4 * qa * target)) / (2 * qa) if qa > 0 else 0.0)
            if h.max() > 2.0:
                # A thin but connected crescent: at least ~2 pixels thick away from its tips.
                sec.rv = sec.ref + np.where(prof > 0.35, np.maximum(h, min(4.5, 0.8 * h.max())), h)
        if endo is not None:
            frac = z_ed / self.L
            grow = 1.3 if es else 1.0
            for theta, size, depth in self.trab:
                r = size * grow * (0.8 + 0.6 * frac)
                rho = float(_lookup(endo, np.array([theta]))[0]) - (0.2 + 0.6 * depth) * r
                if rho > r:
                    sec.dark.append((theta, rho, r))
            if 0.15 < frac < 0.8:
                taper = math.sin(math.pi * (frac - 0.15) / 0.65)
                for theta, rad in self.pap:
                    r = rad * (0.5 + 0.5 * taper) * (1.35 if es else 1.0)
                    rho = float(_lookup(endo, np.array([theta]))[0]) - 0.6 * r
                    if rho > r:
                        sec.dark.append((theta, rho, r))
            if self.has_lvot and z_ed < 6.0:
                sec.lvot = self.lvot
        return sec


# --------------------------------------------------------------------------------------------------
# The torso around it
# --------------------------------------------------------------------------------------------------

@dataclass
class _Ellipse:
    """A smooth star-shaped blob: ellipse (mm, scene frame) times a radial perturbation."""

    c: tuple[float, float]
    a: float
    b: float
    rot: float = 0.0
    shape: np.ndarray | None = None
    power: float = 2.0  # > 2: a squarer superellipse

    def grown(self, t: float) -> "_Ellipse":
        return _Ellipse(self.c, max(self.a + t, 1.0), max(self.b + t, 1.0), self.rot, self.shape, self.power)

    def sd(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Signed distance (mm, > 0 outside), first order: (rho_n - r(theta)) / |grad rho_n|."""
        du, dv = u - self.c[0], v - self.c[1]
        cr, sr = math.cos(self.rot), math.sin(self.rot)
        p, q = cr * du + sr * dv, -sr * du + cr * dv
        pa, qb = p / self.a, q / self.b
        if self.power == 2.0:
            rho = np.sqrt(pa * pa + qb * qb) + 1e-9
            grad = np.sqrt((pa / self.a) ** 2 + (qb / self.b) ** 2) / rho + 1e-9
        else:
            e = self.power
            ap, aq = np.abs(pa) ** (e - 1), np.abs(qb) ** (e - 1)
            rho = (ap * np.abs(pa) + aq * np.abs(qb)) ** (1 / e) + 1e-9
            grad = np.sqrt((ap / self.a) ** 2 + (aq / self.b) ** 2) * rho ** (1 - e) + 1e-9
        r = 1.0 if self.shape is None else _lookup(self.shape, np.arctan2(qb, pa))
        return (rho - r) / grad

    @property
    def radius(self) -> float:
        return max(self.a, self.b) * (1.0 if self.shape is None else float(self.shape.max()))


class _Torso:
    """Patient-level layout of the body around the heart, in mm in a frame centred on the mid LV.

    The frame is the image's: u to the right (posterior/left of the patient), v down (towards the feet).
    The chest wall is left of and above the heart, lungs above and right, abdomen below.
    """

    def __init__(self, rng: np.random.Generator, heart: "_Heart", bmi: float):
        self.fat_t = float(np.clip(rng.uniform(8, 18) + 1.0 * (bmi - 22), 6, 40))
        self.mus_t = rng.uniform(7, 15)
        heart_r = heart.R + heart.W
        left = heart_r + heart.H + rng.uniform(0, 22) + self.mus_t + self.fat_t
        top = heart_r + rng.uniform(40, 110) + self.mus_t + self.fat_t
        right, bottom = rng.uniform(190, 300), rng.uniform(260, 380)
        self.body = _Ellipse((0.5 * (right - left), 0.5 * (bottom - top)), 0.5 * (left + right),
                             0.5 * (top + bottom), math.radians(rng.uniform(-12, 8)),
                             _fourier(rng, (0.04, 0.03, 0.02, 0.01)), rng.uniform(2.0, 3.2))
        self.fat_shape = _fourier(rng, (0.35, 0.25, 0.15), k0=1) * (
            1 + rng.uniform(0.0, 0.8) * _bump(rng.uniform(0.8, 1.1) * np.pi, rng.uniform(0.4, 0.8)))  # breast
        self.mus_shape = _fourier(rng, (0.3, 0.2, 0.1), k0=1)
        # Diaphragm dome v = d0 + d1 u + d2 u^2 separates thorax (above) from abdomen (below);
        # relative to the heart it rises towards the apex.
        self.d0 = heart_r + rng.uniform(0, 22)
        self.d1 = rng.uniform(-0.7, -0.25)
        self.d2 = rng.uniform(0.0015, 0.004)  # a dome: highest to the right of the heart
        self.rise = rng.uniform(20, 55)
        self.liver_l0, self.liver_l1 = rng.uniform(-10, 50), rng.uniform(-0.5, 0.3)
        self.liver_edge = 25.0 * (_fourier(rng, (0.6, 0.4, 0.3), k0=1) - 1.0)  # a lobulated edge (mm)
        # Abdominal organs as balls (u, v, zeta, radius) in 3D: each slice cuts them consistently.
        # The first two are the stomach and the spleen; the rest are bowel loops.
        # Loops are tubes: an in-plane radius and a longer extent along the slices.
        n = int(rng.integers(200, 260))
        self.organs = np.stack([rng.uniform(self.liver_l0 - 40, 230, n), self.d0 + rng.uniform(-50, 240, n),
                                rng.uniform(-30, heart.L + 40, n), rng.uniform(9, 24, n), rng.uniform(12, 45, n)],
                               axis=1)
        self.organs[0] = (rng.uniform(50, 100), self.d0 + rng.uniform(30, 70), heart.L * rng.uniform(0.3, 0.7),
                          rng.uniform(40, 55), 60.0)
        self.organs[1] = (rng.uniform(130, 180), self.d0 + rng.uniform(10, 60), heart.L * rng.uniform(0.0, 0.5),
                          rng.uniform(45, 60), 60.0)
        self.organ_texture = rng.uniform(0.03, 0.2, n)
        self.organ_level = rng.random(n)  # where in the style's organ range; most loops are darker
        self.organ_wall = rng.random(n) < 0.5  # dark wall (else a fat plane) against its neighbours
        spine_dir = math.radians(rng.uniform(-5, 35))
        self.spine_dir = np.array([math.cos(spine_dir), math.sin(spine_dir)])
        self.spine_inset = rng.uniform(25, 45)
        self.vert_r = rng.uniform(14, 19)
        self.aorta_r = rng.uniform(9, 13)
        self.aorta_off = rng.uniform(-25, 15)
        self.arm = rng.random() < 0.4
        self.arm_angle = math.radians(rng.uniform(-110, -60))
        self.n_lung_vessels = int(rng.integers(50, 110))
        # Posterior mediastinum beside the heart: fat with pulmonary veins / left atrium / oesophagus,
        # fading towards the apex. Lung vessels crowd around it (the hilum).
        ang = heart.septum + np.pi + math.radians(rng.uniform(-35, 35))  # behind the lateral wall
        self.hilum = (heart.R + heart.W + rng.uniform(10, 25)) * np.array([math.cos(ang), math.sin(ang)])
        self.hilum_r = rng.uniform(30, 45)
        self.hilum_vessels = [(rng.uniform(0, 2 * np.pi), rng.uniform(0, 1), rng.uniform(4, 12), rng.random() < 0.75)
                              for _ in range(int(rng.integers(1, 5)))]
        self.cartilage = rng.random() < 0.7


# --------------------------------------------------------------------------------------------------
# Rendering of one slice
# --------------------------------------------------------------------------------------------------

class _Canvas:
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
        self.fine = _smooth_noise(rng, shape, 0.9)
        self.coarse = _smooth_noise(rng, shape, 6.0)
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

    def blob(self, e: _Ellipse, tissue: str, level: float | None = None, clip: np.ndarray | None = None) -> None:
        box = self.box(e.c, e.radius + 2 * self.px)
        if box[0].stop <= box[0].start or box[1].stop <= box[1].start:
            return
        alpha = _soft(e.sd(self.u[box], self.v[box]), self.px)
        if clip is not None:
            alpha = alpha * clip[box]
        self.paint(alpha, tissue, box, level)


def _render_background(canvas: _Canvas, torso: _Torso, zeta: float, t: float, rng: np.random.Generator) -> None:
    """Everything but the heart: shared by ED and ES of the same slice (only the noise differs)."""
    u, v, px = canvas.u, canvas.v, canvas.px
    body = torso.body
    d_body = body.sd(u, v)
    canvas.paint(_soft(d_body, px), "fat")
    # Skin fat of varying thickness, chest/abdominal wall muscle, then the cavity (fat where no organ
    # is painted; an intermittent thin fat line remains between the wall and the lung).
    theta = np.arctan2(v - body.c[1], u - body.c[0]) - body.rot
    fat_t = torso.fat_t * _lookup(torso.fat_shape, theta) * (1 + 0.05 * canvas.coarse)
    d_mus = d_body + fat_t
    mus_t = torso.mus_t * _lookup(torso.mus_shape, theta) * (1 + 0.05 * canvas.coarse)
    canvas.paint(_soft(d_mus, px), "muscle")
    d_cav = d_mus + mus_t
    cavity = _soft(d_cav, px)
    canvas.paint(cavity, "fat")
    # Ribs across the lateral/upper wall: dark cortex around grey marrow.
    for _ in range(int(rng.integers(2, 6))):
        ang = rng.uniform(1.05, 1.9) * np.pi + body.rot
        rr = 1 - (torso.fat_t + 0.5 * torso.mus_t) / min(body.a, body.b)
        c = (body.c[0] + rr * body.a * math.cos(ang), body.c[1] + rr * body.b * math.sin(ang))
        rib = _Ellipse(c, rng.uniform(6, 11), rng.uniform(3.5, 5.5), ang + np.pi / 2)
        canvas.blob(rib.grown(1.2), "muscle", level=0.05 * canvas.tissue["blood"])
        canvas.blob(rib, "marrow")
    # Costal cartilages: a chain of grey ovals in the anterior chest wall.
    if torso.cartilage:
        a0 = rng.uniform(0.75, 0.95) * np.pi
        for i in range(int(rng.integers(3, 7))):
            ang = a0 + i * rng.uniform(0.12, 0.2) + body.rot
            rr = 1 - (torso.fat_t + 0.55 * torso.mus_t) / min(body.a, body.b)
            c = (body.c[0] + rr * body.a * math.cos(ang), body.c[1] + rr * body.b * math.sin(ang))
            rib = _Ellipse(c, rng.uniform(5, 9), rng.uniform(3.5, 6), ang + np.pi / 2)
            canvas.blob(rib.grown(1.0), "muscle", level=0.08 * canvas.tissue["blood"])
            canvas.blob(rib, "marrow", level=rng.uniform(0.12, 0.3))
    # Thorax above the diaphragm: lungs (very dark, bright vessels); abdomen below it.
    d0 = torso.d0 - torso.rise * (t - 0.5)
    diaphragm = d0 + torso.d1 * u + torso.d2 * u * u + 3.0 * canvas.coarse
    d_dia = (v - diaphragm) / math.sqrt(1 + torso.d1 ** 2)
    thorax = _soft(d_cav + 0.6 + np.clip(1.2 * canvas.coarse, 0, None), px) * _soft(d_dia, px)
    abdomen = cavity * _soft(-d_dia - 4.0, px)
    canvas.paint(thorax, "lung")
    canvas.paint(cavity * _soft(np.abs(d_dia + 2.0) - 2.0, px), "muscle")  # the diaphragm itself
    # Liver on the left of the abdomen, with bright vessels.
    lb = torso.liver_l0 + torso.liver_l1 * (v - d0) + 10 * canvas.coarse + _lookup(torso.liver_edge, v / 80.0)
    liver = abdomen * _soft(u - lb, px)
    _abdomen(canvas, torso, abdomen * (1 - liver), zeta)
    canvas.paint(liver, "liver")
    for _ in range(int(rng.integers(8, 20))):
        c = (torso.liver_l0 - rng.uniform(-20, 130), d0 + rng.uniform(5, 200))
        r = rng.uniform(1.5, 5)
        canvas.blob(_Ellipse(c, r * rng.uniform(1, 2.5), r, rng.uniform(0, np.pi)), "blood",
                    level=rng.uniform(0.5, 1.0) * canvas.tissue["blood"], clip=liver)
    # Mediastinum beside the heart base: a fat pad with round vessels (bright) or oesophagus (grey).
    fade = max(0.0, 1.0 - 2.2 * t)
    if fade > 0.05:
        hc = torso.hilum * (0.7 + 0.3 * fade)
        pad = _Ellipse(tuple(hc), torso.hilum_r * (0.5 + 0.5 * fade), torso.hilum_r * (0.4 + 0.4 * fade),
                       rng.uniform(-0.5, 0.5), _fourier(rng, (0.15, 0.1, 0.05)))
        canvas.blob(pad, "fat", clip=cavity)
        for ang, rr, r, bright in torso.hilum_vessels:
            c = (hc[0] + rr * 0.6 * pad.a * math.cos(ang), hc[1] + rr * 0.6 * pad.b * math.sin(ang))
            r = r * (0.5 + 0.5 * fade)
            e = _Ellipse(c, r * rng.uniform(0.9, 1.3), r, rng.uniform(0, np.pi))
            if not bright:  # oesophagus / collapsed vessel: grey with a dark wall
                canvas.blob(e.grown(1.2), "muscle", level=0.1 * canvas.tissue["blood"], clip=cavity)
            canvas.blob(e, "blood" if bright else "muscle", clip=cavity)
    # Lung vessels: bright dots and short segments, crowded towards the hilum.
    inner = thorax * (d_dia < -3.0)
    for _ in range(torso.n_lung_vessels):
        c = tuple(torso.hilum + rng.normal(0, 70, 2)) if rng.random() < 0.6 else (rng.uniform(-120, 230),
                                                                                 rng.uniform(-200, d0))
        r = rng.uniform(0.6, 2.2)
        length = r if rng.random() < 0.85 else r * rng.uniform(1.5, 3.5)
        canvas.blob(_Ellipse(c, length, r, rng.uniform(0, np.pi)), "blood",
                    level=rng.uniform(0.5, 1.0) * canvas.tissue["blood"], clip=inner)
    # Spine (vertebral body, cortex, paraspinal muscles) and the descending aorta in front of it.
    e1 = np.array([math.cos(body.rot), math.sin(body.rot)])
    e2 = np.array([-math.sin(body.rot), math.cos(body.rot)])
    reach = math.hypot(body.a * (torso.spine_dir @ e1), body.b * (torso.spine_dir @ e2))
    dist = reach + float(torso.spine_dir @ np.array(body.c)) - torso.fat_t - torso.spine_inset - torso.vert_r
    sc = torso.spine_dir * dist
    perp = np.array([-torso.spine_dir[1], torso.spine_dir[0]])
    for side in (-1, 1):
        pm = sc + torso.spine_dir * (torso.vert_r + 10) + side * perp * 24
        canvas.blob(_Ellipse(tuple(pm), 22, 15, math.atan2(perp[1], perp[0])), "muscle", clip=cavity)
    vert = _Ellipse(tuple(sc), torso.vert_r, torso.vert_r * 0.85, rng.uniform(0, np.pi), _fourier(rng, (0.05,)))
    canvas.blob(vert.grown(2.0), "muscle", level=0.06 * canvas.tissue["blood"], clip=cavity)
    canvas.blob(vert, "marrow", clip=cavity)
    ac = sc - torso.spine_dir * (torso.vert_r + torso.aorta_r + 4) + perp * torso.aorta_off
    canvas.blob(_Ellipse(tuple(ac), torso.aorta_r + 1.5, torso.aorta_r + 1.5), "muscle", clip=cavity)
    canvas.blob(_Ellipse(tuple(ac), torso.aorta_r, torso.aorta_r * 0.95), "blood", clip=cavity)
    # An arm beside the chest (outside the body outline), often off-centre and banded.
    if torso.arm:
        ang = torso.arm_angle
        dirv = np.array([math.cos(ang), math.sin(ang)])
        reach = math.hypot(body.a * math.cos(ang - body.rot), body.b * math.sin(ang - body.rot))
        ac = np.array(body.c) + dirv * (reach + 55)
        arm = _Ellipse(tuple(ac), 48, 40, ang, _fourier(rng, (0.05, 0.03)))
        canvas.blob(arm, "fat")
        canvas.blob(arm.grown(-8), "muscle")
        canvas.blob(_Ellipse(tuple(ac + dirv * 5), 11, 10), "muscle", level=0.05 * canvas.tissue["blood"])
        canvas.blob(_Ellipse(tuple(ac + dirv * 5), 8, 7), "marrow")


def _abdomen(canvas: _Canvas, torso: _Torso, alpha: np.ndarray, zeta: float) -> None:
    """Stomach, spleen and bowel: the slice's cuts through the torso's organ tubes, packed as a warped
    power diagram (irregular rounded organs of their own brightness and texture), with fat between
    them and a dark wall or a thin fat plane where two touch."""
    near = np.nonzero(alpha > 0)
    organs = torso.organs
    weight = organs[:, 3] ** 2 * (1 - ((zeta - organs[:, 2]) / organs[:, 4]) ** 2)  # squared radius of each cut
    cut = np.nonzero(weight > 16.0)[0]
    if near[0].size == 0 or cut.size < 2:
        return
    seeds, weight = organs[cut, :2], weight[cut]
    warp = 9.0 * canvas.coarse[near], 9.0 * np.roll(canvas.coarse, (17, 23), axis=(0, 1))[near]
    u, v = canvas.u[near] + warp[0], canvas.v[near] + warp[1]
    d2 = (u[None] - seeds[:, :1]) ** 2 + (v[None] - seeds[:, 1:]) ** 2 - weight[:, None]
    cols = np.arange(d2.shape[1])
    cell = np.argmin(d2, axis=0)
    first = d2[cell, cols]
    d2[cell, cols] = np.inf
    other = np.argmin(d2, axis=0)
    second = d2[other, cols]
    dist = np.linalg.norm(seeds[cell] - seeds[other], axis=1)
    gap = (second - first) / (2 * np.maximum(dist, 1e-6))  # mm to the boundary between the two cells
    lo, hi = canvas.tissue["organ_lo"], canvas.tissue["organ_hi"]
    x = torso.organ_level[cut]
    level = lo + (hi - lo) * x ** 1.8  # most loops dark-grey, a few bright with fluid
    level[cut == 1] = canvas.tissue["spleen"]
    value = level[cell] * (1 + torso.organ_texture[cut][cell] * canvas.fine[near] + 0.12 * canvas.coarse[near])
    wall = np.where(torso.organ_wall[cut], 0.15 * canvas.tissue["blood"], canvas.tissue["fat"])
    value = value + _soft(gap - 1.2, canvas.px) * (wall[cell] - value)
    # > 0: between organs, where fat shows (organs fill most of their cell: a little fat, not a sea).
    outside = np.sqrt(np.maximum(first + weight[cell], 0)) - np.sqrt(weight[cell]) - 5.0
    rim = _soft(np.abs(outside + 1.0) - 0.8, canvas.px) * torso.organ_wall[cut][cell]
    value = value + rim * (0.15 * canvas.tissue["blood"] - value)  # bowel wall against the fat
    fat = canvas.value("fat", near)
    value = value + _soft(-outside, canvas.px) * (fat - value)
    target = canvas.img[near]
    canvas.img[near] = target + alpha[near] * (value - target)


def _render_heart(canvas: _Canvas, heart: _Heart, zetas: list[float], phase: str, centre: np.ndarray,
                  rot: float) -> tuple[np.ndarray, tuple[slice, slice], np.ndarray]:
    """Paint the heart (averaged over sub-slices: through-plane partial volume); return its label box.

    Returns the painted image box, the box, and label fractions (4, ...) for background/RV/MYO/LV.
    """
    sections = [heart.section(zeta, phase) for zeta in zetas]
    reach = max(float(np.max(s.rv if s.rv is not None else s.ref)) + float(heart.fat.max()) * 1.3 + 8.0
                for s in sections)
    box = canvas.box(tuple(centre), reach)
    u = canvas.u[box] - centre[0]
    v = canvas.v[box] - centre[1]
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u) - rot
    px = canvas.px
    base = canvas.img[box].copy()
    img_acc = np.zeros_like(base)
    frac_acc = np.zeros((4,) + base.shape)
    tis = canvas.tissue
    for sec in sections:
        img = base.copy()
        frac = np.zeros_like(frac_acc)
        frac[0] = 1.0

        def paint(alpha, tissue, label, level=None):
            img[...] += alpha * (canvas.value(tissue, box, level) - img)
            frac[...] *= 1 - alpha
            frac[label] += alpha

        outline = sec.ref if sec.epi is None else sec.epi
        if sec.rv is not None:
            outline = np.maximum(outline, sec.rv + heart.rv_wall)
        if sec.epi is not None or sec.rv is not None or sec.atrium > 0:
            fat_r = _lookup(outline + heart.fat * heart.fat_shape, theta)
            paint(_soft(rho - fat_r - 1.2, px), "muscle", 0, level=0.1 * tis["blood"])  # pericardium
            paint(_soft(rho - fat_r, px), "fat", 0)
        if sec.rv is not None:
            rv_r = _lookup(sec.rv, theta)
            paint(_soft(rho - rv_r - heart.rv_wall, px), "myocardium", 0)  # RV free wall, not labelled
            paint(_soft(rho - rv_r, px), "blood", 1, level=tis["blood_rv"])
        if sec.epi is None and sec.atrium > 0:  # above the LV base: AV-groove fat and an atrium
            paint(_soft(rho - _lookup(sec.ref, theta), px), "fat", 0)
            a = rot + heart.septum + np.pi
            d_at = np.hypot(u - 8.0 * math.cos(a), v - 8.0 * math.sin(a))
            paint(_soft(d_at - sec.atrium, px), "blood", 0)
        if sec.epi is not None:
            paint(_soft(rho - _lookup(sec.epi, theta), px), "myocardium", 2)
        if sec.endo is not None:
            inside = _soft(rho - _lookup(sec.endo, theta), px)
            paint(inside, "blood", 3)
            if sec.dark:  # papillary muscles and trabeculae: dark, but labelled as cavity (ACDC)
                near = np.nonzero(inside > 0)
                th, r_c, r = (np.array(x)[:, None] for x in zip(*sec.dark))
                d = np.hypot(u[near] - r_c * np.cos(th + rot), v[near] - r_c * np.sin(th + rot)) - r
                dark = np.zeros_like(inside)
                dark[near] = inside[near] * _soft(d.min(axis=0), px)
                paint(dark, "myocardium", 3)
            if sec.lvot is not None:  # open outflow: blood through the wall, labelled as cavity
                dth = np.abs(np.angle(np.exp(1j * (theta - sec.lvot[0]))))
                sector = _soft((dth - sec.lvot[1]) * np.maximum(rho, 1.0), px)
                paint(sector * _soft(rho - _lookup(sec.epi, theta) - 1.0, px), "blood", 3)
        img_acc += img
        frac_acc += frac
    n = len(zetas)
    return img_acc / n, box, frac_acc / n


# --------------------------------------------------------------------------------------------------
# Acquisition: bias, banding, k-space window, noise
# --------------------------------------------------------------------------------------------------

def _tukey(n: int, keep: float, taper: float) -> np.ndarray:
    """k-space window over fftfreq order: 1 in the centre, cos taper, 0 beyond the acquired fraction."""
    f = np.abs(np.fft.fftfreq(n)) * 2.0 / keep  # 1 at the edge of the acquired region
    w = np.ones(n)
    if taper > 0:
        edge = f > 1 - taper
        w[edge] = 0.5 * (1 + np.cos(np.pi * (f[edge] - (1 - taper)) / taper))
    w[f > 1] = 0.0
    return w


@dataclass
class _Acquisition:
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
    def draw(cls, rng: np.random.Generator, style: ScannerStyle) -> "_Acquisition":
        px = _u(rng, style.pixel_mm)
        fov = _u(rng, style.fov_mm)
        long = int(round(fov / px / 8) * 8)
        short = int(round(long * rng.uniform(0.78, 0.95) / 8) * 8)
        shape = (short, long) if rng.random() < 0.85 else (long, short)  # mostly portrait, like ACDC
        spacing = (px, px, _u(rng, style.slice_spacing_mm))
        thickness = min(_u(rng, style.slice_thickness_mm), spacing[2])
        ro, pe = _u(rng, style.readout_fraction), _u(rng, style.phase_fraction)
        fx, fy = (ro, pe) if rng.random() < 0.5 else (pe, ro)
        window = np.outer(_tukey(shape[0], fx, style.k_taper), _tukey(shape[1], fy, style.k_taper))
        # Coil elements: mostly an anterior array on the chest wall, sometimes a weaker posterior one;
        # (angle about the body centre in the image frame, width in mm, amplitude).
        coils = [(rng.uniform(0.55, 1.45) * np.pi, rng.uniform(50, 110), rng.uniform(0.4, 1.0))
                 for _ in range(int(rng.integers(2, 4)))]
        if rng.random() < 0.6:
            coils.append((rng.uniform(-0.3, 0.3) * np.pi, rng.uniform(70, 120), rng.uniform(0.2, 0.5)))
        poly = rng.normal(0, 1, size=5)
        band = None
        if style.banding > 0 and rng.random() < 0.85:
            band = (rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), rng.uniform(0.75, 1.05), rng.uniform(3.0, 6.0),
                    rng.uniform(0, 2 * np.pi), style.banding * rng.uniform(0.6, 1.0), rng.uniform(0.12, 0.3))
        zb = None
        if rng.random() < style.zero_border:
            zb = (math.radians(rng.uniform(-8, 8)), rng.uniform(0.0, 0.08), rng.uniform(0.0, 0.08))
        return cls(style, shape, spacing, thickness, window, _u(rng, style.noise), _u(rng, style.scale),
                   (coils, poly), band, zb)

    def fields(self, body: "_Ellipse", origin: np.ndarray, angle: float, heart: np.ndarray) -> np.ndarray:
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
            sens = sens + 3.0 * s * amp * np.exp(-((xs[:, None] - cx) ** 2 + (ys[None, :] - cy) ** 2) / (2 * w * w))
        x = np.linspace(-1, 1, nx)[:, None]
        y = np.linspace(-1, 1, ny)[None, :]
        field_ = sens * np.exp(s * 0.3 * (poly[0] * x + poly[1] * y + poly[2] * x * y + poly[3] * x * x
                                          + poly[4] * y * y))
        hx, hy = to_image(heart)
        i = min(max(int(hx / self.spacing[0]), 0), nx - 1)
        j = min(max(int(hy / self.spacing[1]), 0), ny - 1)
        field_ /= field_[i, j]
        if self.band is not None:
            bx, by, r0, q, phi0, depth, width = self.band
            r = np.sqrt((x - bx) ** 2 + ((y - by) * ny / nx) ** 2) / r0
            phase = np.pi * r ** q + 0.3 * math.sin(phi0) * (x * y) + 0.3 * math.cos(phi0) * (x - y) ** 2
            off = np.angle(np.exp(1j * (phase - np.pi)))  # bSSFP signal nulls where off-resonance = pi
            field_ *= 1 - depth * np.exp(-off ** 2 / (2 * width ** 2)) * np.clip((r - 0.85) * 4, 0, 1)
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


# --------------------------------------------------------------------------------------------------
# Patients
# --------------------------------------------------------------------------------------------------

@dataclass
class PhantomPatient:
    """One generated patient: ED and ES volumes (X, Y, Z) with masks, as they will be written."""

    group: str
    style: str
    info: dict[str, object]  # Info.cfg fields (ED, ES, Group, Height, NbFrame, Weight)
    affine: np.ndarray
    images: dict[str, np.ndarray]  # phase -> float32 image
    masks: dict[str, np.ndarray]  # phase -> uint8 mask (0 bg, 1 RV, 2 MYO, 3 LV)

    @property
    def frames(self) -> dict[str, int]:
        return {"ED": int(self.info["ED"]), "ES": int(self.info["ES"])}


def _tissue_levels(rng: np.random.Generator, style: ScannerStyle) -> dict[str, float]:
    levels = {name: _u(rng, rng_range) for name, rng_range in style.contrast.items() if name != "organ"}
    levels["blood_rv"] = levels["blood"] * rng.uniform(0.88, 1.0)
    levels["organ_lo"], levels["organ_hi"] = style.contrast["organ"]
    levels["organ"] = 0.5 * (levels["organ_lo"] + levels["organ_hi"])
    return levels


def generate_patient(rng: np.random.Generator | int, style: str | ScannerStyle | None = None,
                     group: str | None = None) -> PhantomPatient:
    """Draw one patient and render its ED and ES volumes.

    Anatomy, style choice and acquisition come from three independent streams of `rng`, so the same
    rng with a forced `style` gives the same heart seen by another scanner.
    """
    rng = np.random.default_rng(rng)
    anat_seed, style_seed, scan_seed = (int(s) for s in rng.integers(0, 2 ** 63, size=3))
    anat = np.random.default_rng(anat_seed)
    if style is None:
        style = str(np.random.default_rng(style_seed).choice(sorted(STYLES)))
    if isinstance(style, str):
        if style not in STYLES:
            raise ValueError(f"style: unknown scanner style {style!r}; expected one of {sorted(STYLES)} or None")
        style = STYLES[style]
    group = group if group is not None else str(anat.choice(GROUPS))
    if group not in _GROUP_PARAMS:
        raise ValueError(f"group: unknown group {group!r}; expected one of {list(GROUPS)}")

    height = float(np.round(anat.uniform(152, 195)))
    bmi = float(np.clip(anat.normal(26, 4), 18, 40))
    weight = float(np.round(bmi * (height / 100) ** 2))
    n_frames = int(anat.integers(25, 36))
    es_frame = int(round(n_frames * anat.uniform(0.3, 0.44))) + 1
    heart = _Heart(anat, group)
    torso = _Torso(anat, heart, bmi)
    # Where the heart sits in the field of view and how the whole scene is rotated.
    place = (anat.uniform(0.4, 0.54), anat.uniform(0.42, 0.56))
    tilt = anat.normal(0, 12) if anat.random() < 0.7 else anat.choice([-1, 1]) * anat.uniform(20, 40)
    scene_angle = math.radians(tilt)

    scan = np.random.default_rng(scan_seed)
    acq = _Acquisition.draw(scan, style)
    tissue = _tissue_levels(scan, style)
    texture = {k: (a * style.texture, b * style.texture) for k, (a, b) in _TEXTURE.items()}

    dz = acq.spacing[2]
    zeta0 = anat.uniform(-3.0, 7.0)  # first slice relative to the ED base (< 0: above it)
    n_slices = int(np.clip((heart.L_epi - 3.0 - zeta0) // dz + 1, 8, 13))
    if n_slices < 13 and anat.random() < 0.15:
        n_slices += 1  # one slice beyond the apex, as some ACDC stacks have
    zetas = zeta0 + dz * np.arange(n_slices)
    heart.L_rv = min(heart.L_rv, zetas[-1] - 8.0)  # the RV ends before the last slice
    sub = [-acq.thickness / 3, 0.0, acq.thickness / 3]
    heart.calibrate([z + s for z in zetas for s in sub])
    origin = np.array([place[0] * acq.shape[0] * acq.spacing[0], place[1] * acq.shape[1] * acq.spacing[1]])
    jitter = anat.normal(0, 1.5, size=(n_slices, 2))  # breath-hold position differs per slice
    field_ = acq.fields(torso.body, origin, scene_angle, np.zeros(2))

    images = {p: np.zeros(acq.shape + (n_slices,), np.float32) for p in ("ED", "ES")}
    masks = {p: np.zeros(acq.shape + (n_slices,), np.uint8) for p in ("ED", "ES")}
    slice_seeds = anat.integers(0, 2 ** 63, size=(n_slices, 2))  # textures, background details
    for k, zeta in enumerate(zetas):
        t = float(np.clip(zeta / heart.L, 0, 1.1))
        canvas = _Canvas(acq.shape, acq.spacing[:2], origin + jitter[k], scene_angle, tissue, texture,
                         np.random.default_rng(slice_seeds[k, 0]))
        _render_background(canvas, torso, zeta, t, np.random.default_rng(slice_seeds[k, 1]))
        for phase in ("ED", "ES"):
            centre = heart.drift * (t - 0.5) + (heart.es_shift if phase == "ES" else 0.0)
            rot = heart.twist * (t - 0.5)
            img_box, box, frac = _render_heart(canvas, heart, [zeta + s for s in sub], phase, centre, rot)
            img = canvas.img.copy()
            img[box] = img_box
            images[phase][:, :, k] = acq.acquire(img, field_, scan)
            masks[phase][box + (k,)] = _drop_specks(np.argmax(frac, axis=0).astype(np.uint8))

    info = {"ED": 1, "ES": es_frame, "Group": group, "Height": height, "NbFrame": n_frames, "Weight": weight}
    affine = np.diag([acq.spacing[0], acq.spacing[1], acq.spacing[2], 1.0])
    return PhantomPatient(group=group, style=style.name, info=info, affine=affine, images=images, masks=masks)


def _drop_specks(labels: np.ndarray, max_size: int = 4) -> np.ndarray:
    """Remove isolated few-pixel islands that partial volume leaves at thin tips (e.g. of the RV)."""
    for label in (1, 2, 3):
        comp, n = ndimage.label(labels == label)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            small = (sizes <= max_size) & (np.arange(sizes.size) > 0) & (sizes < sizes[1:].max())
            labels[small[comp]] = 0
    return labels


def _info_cfg(patient: PhantomPatient, seed: int) -> str:
    i = patient.info
    return (f"ED: {i['ED']}\nES: {i['ES']}\nGroup: {i['Group']}\nHeight: {i['Height']:.1f}\n"
            f"NbFrame: {i['NbFrame']}\nWeight: {i['Weight']:.1f}\n"
            f"Source: cmr-synth phantom (style={patient.style}, seed={seed})\n")


def write_phantom(out_dir: Path | str, n_patients: int, seed: int, style: str | None = None) -> list[Path]:
    """Write `n_patients` phantom patients in the ACDC layout under `out_dir`; return their folders.

    Groups cycle NOR, DCM, HCM, MINF, RV (balanced, like ACDC); patient i depends only on (seed, i).
    """
    if n_patients < 1:
        raise ValueError(f"n_patients: expected at least 1, got {n_patients}")
    if style is not None and style not in STYLES:
        raise ValueError(f"style: unknown scanner style {style!r}; expected one of {sorted(STYLES)} or None")
    return [write_patient(out_dir, i, seed, style)
            for i in tqdm(range(n_patients), desc="phantom", unit="patient", leave=False)]


def write_patient(out_dir: Path | str, i: int, seed: int, style: str | None = None) -> Path:
    """Write phantom patient `i` (0-based) of `write_phantom(out_dir, n, seed, style)` for any n > i; return its
    folder. Info.cfg is written last, so a folder holding it is complete (patients can be written in parallel)."""
    pid = f"patient{i + 1:03d}"
    child = np.random.SeedSequence(seed, spawn_key=(i,))  # = SeedSequence(seed).spawn(n)[i]
    patient = generate_patient(np.random.default_rng(child), style, group=GROUPS[i % len(GROUPS)])
    pdir = Path(out_dir) / pid
    for phase, frame in patient.frames.items():
        stem = pdir / f"{pid}_frame{frame:02d}"
        write_nifti(f"{stem}.nii.gz", patient.images[phase], patient.affine)
        write_nifti(f"{stem}_gt.nii.gz", patient.masks[phase], patient.affine, is_label=True)
    write_text(pdir / "Info.cfg", _info_cfg(patient, seed))
    return pdir
