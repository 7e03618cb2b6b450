"""The heart: one patient's LV, myocardium and RV at ED and ES as radial functions of depth, and their
rendering with through-plane partial volume and ACDC's labelling conventions."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from data.phantom.canvas import Canvas
from data.phantom.shapes import N_THETA, THETA, bump, draw, fourier, lookup, soft


GROUPS: tuple[str, ...] = ("NOR", "DCM", "HCM", "MINF", "RV")


# Group physiology, mm and fractions: LV cavity radius R and length L at ED, wall W, ejection fraction,
# longitudinal shortening at ES, RV crescent thickness H and RV ejection fraction. Ranges follow ACDC's
# group statistics (LVEDV ~ 130 NOR, ~ 285 DCM, ~ 130 HCM, ~ 170 MINF, ~ 110 RV ml; RVEDV ~ 150-200 ml).
GROUP_PARAMS = {
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


@dataclass
class Section:
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
    return float(np.sum(ref * h + 0.5 * h * h) * (2 * np.pi / N_THETA))


class Heart:
    """Geometry of one patient's ventricles at ED and ES as a function of depth below the ED base."""

    def __init__(self, rng: np.random.Generator, group: str):
        g = GROUP_PARAMS[group]
        self.group = group
        self.R, self.L, self.W = draw(rng, g["R"]), draw(rng, g["L"]), draw(rng, g["W"])
        self.L_epi = self.L + self.W * rng.uniform(0.7, 1.1)
        self.p = rng.uniform(2.0, 2.8)  # profile fullness: 2 = ellipsoid, larger = blunter apex
        self.ef, self.kl = draw(rng, g["EF"]), draw(rng, g["kl"])
        self.rvef = draw(rng, g["RVEF"])
        self.septum = math.radians(rng.normal(172.0, 10.0))  # direction LV -> RV in the image plane
        # Shapes at base and apex, interpolated in between.
        self.shape = [fourier(rng, (0.06, 0.03, 0.015)), fourier(rng, (0.08, 0.04, 0.02))]
        self.shape_es = fourier(rng, (0.05, 0.03, 0.02, 0.015))
        wall = fourier(rng, (0.08, 0.05), k0=1)
        if group == "HCM":  # asymmetric septal hypertrophy
            wall = wall * (1 + rng.uniform(0.2, 0.6) * bump(self.septum, rng.uniform(0.9, 1.5)))
        self.akinesia = np.zeros(N_THETA)
        self.infarct_depth = (0.0, 1.0)
        if group == "MINF":  # thinned, akinetic infarct sector away from the septum
            centre = self.septum + np.pi + rng.uniform(-1.6, 1.6)
            sector = bump(centre, math.radians(rng.uniform(45, 80)))
            wall = wall * (1 - rng.uniform(0.35, 0.55) * sector)
            self.akinesia = rng.uniform(0.7, 1.0) * sector
            self.infarct_depth = (rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0))  # along the long axis
        self.wall = wall
        # Radial contraction: continuous-volume value here, tuned to the actual slices by `calibrate`.
        self.kr = math.sqrt(min(0.98, (1 - self.ef) / self.kl))
        # RV crescent: thickness H, angular half-widths towards the anterior/inferior insertions.
        self.H = draw(rng, g["H"])
        self.delta = (math.radians(rng.uniform(65, 90)), math.radians(rng.uniform(55, 80)))
        if group == "RV":
            self.delta = (self.delta[0] * 1.15, self.delta[1] * 1.15)
        self.gamma = rng.uniform(0.4, 0.7)
        self.L_rv = self.L * rng.uniform(0.7, 0.88)
        self.rv_above = rng.uniform(8.0, 18.0)  # RV outflow extends above the LV base
        self.rv_shape = fourier(rng, (0.1, 0.07, 0.04), k0=1)
        self.rv_wall = rng.uniform(2.5, 4.0)
        grooves = bump(self.septum + self.delta[0], 0.45) + bump(self.septum - self.delta[1], 0.45)
        self.fat = rng.uniform(0.0, 1.2) + rng.uniform(2.0, 8.0) * grooves
        self.fat = self.fat + rng.uniform(0.0, 3.0) * bump(self.septum, 1.0)  # towards the chest wall
        self.fat_shape = fourier(rng, (0.3, 0.3, 0.2, 0.2, 0.2), k0=3)
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
        d = np.angle(np.exp(1j * (THETA - self.septum)))
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

    def section(self, zeta: float, phase: str) -> Section:
        """The heart at depth zeta (mm below the ED base, scanner-fixed) in phase ED or ES."""
        es = phase == "ES"
        z_ed = self._es_map(zeta) if es else zeta
        endo, epi = self._ed(z_ed)
        if epi is not None and es:
            if endo is not None:
                endo, epi = self._es_walls(endo, epi)
            else:
                epi = epi / math.sqrt(self.kl)
        sec = Section(endo=endo, epi=epi)
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
                target = _crescent_area(ref_ed, H_ed * prof_ed) * (1 - self.rvef) * N_THETA / (2 * np.pi)
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
                rho = float(lookup(endo, np.array([theta]))[0]) - (0.2 + 0.6 * depth) * r
                if rho > r:
                    sec.dark.append((theta, rho, r))
            if 0.15 < frac < 0.8:
                taper = math.sin(math.pi * (frac - 0.15) / 0.65)
                for theta, rad in self.pap:
                    r = rad * (0.5 + 0.5 * taper) * (1.35 if es else 1.0)
                    rho = float(lookup(endo, np.array([theta]))[0]) - 0.6 * r
                    if rho > r:
                        sec.dark.append((theta, rho, r))
            if self.has_lvot and z_ed < 6.0:
                sec.lvot = self.lvot
        return sec


def render_heart(canvas: Canvas, heart: Heart, zetas: list[float], phase: str, centre: np.ndarray,
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
            fat_r = lookup(outline + heart.fat * heart.fat_shape, theta)
            paint(soft(rho - fat_r - 1.2, px), "muscle", 0, level=0.1 * tis["blood"])  # pericardium
            paint(soft(rho - fat_r, px), "fat", 0)
        if sec.rv is not None:
            rv_r = lookup(sec.rv, theta)
            paint(soft(rho - rv_r - heart.rv_wall, px), "myocardium", 0)  # RV free wall, not labelled
            paint(soft(rho - rv_r, px), "blood", 1, level=tis["blood_rv"])
        if sec.epi is None and sec.atrium > 0:  # above the LV base: AV-groove fat and an atrium
            paint(soft(rho - lookup(sec.ref, theta), px), "fat", 0)
            a = rot + heart.septum + np.pi
            d_at = np.hypot(u - 8.0 * math.cos(a), v - 8.0 * math.sin(a))
            paint(soft(d_at - sec.atrium, px), "blood", 0)
        if sec.epi is not None:
            paint(soft(rho - lookup(sec.epi, theta), px), "myocardium", 2)
        if sec.endo is not None:
            inside = soft(rho - lookup(sec.endo, theta), px)
            paint(inside, "blood", 3)
            if sec.dark:  # papillary muscles and trabeculae: dark, but labelled as cavity (ACDC)
                near = np.nonzero(inside > 0)
                th, r_c, r = (np.array(x)[:, None] for x in zip(*sec.dark))
                d = np.hypot(u[near] - r_c * np.cos(th + rot), v[near] - r_c * np.sin(th + rot)) - r
                dark = np.zeros_like(inside)
                dark[near] = inside[near] * soft(d.min(axis=0), px)
                paint(dark, "myocardium", 3)
            if sec.lvot is not None:  # open outflow: blood through the wall, labelled as cavity
                dth = np.abs(np.angle(np.exp(1j * (theta - sec.lvot[0]))))
                sector = soft((dth - sec.lvot[1]) * np.maximum(rho, 1.0), px)
                paint(sector * soft(rho - lookup(sec.epi, theta) - 1.0, px), "blood", 3)
        img_acc += img
        frac_acc += frac
    n = len(zetas)
    return img_acc / n, box, frac_acc / n
