"""The heart: one patient's LV, myocardium and RV at ED and ES as radial functions of depth, and their
rendering with through-plane partial volume and ACDC's labelling conventions.

Depth zeta is in mm below the ED base along the (scanner-fixed) slice normal; a section is the set of
outlines (mm about the LV centre, sampled on `shapes.THETA`) that one slice cuts at ED or ES.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from data.phantom.canvas import Canvas
from data.phantom.shapes import N_THETA, THETA, bump, draw, fourier, lookup, soft
from data.types import NUM_CLASSES

BG, RV, MYO, LV = 0, 1, 2, 3  # label values written to the masks (ACDC order, as data.types.LABELS)


@dataclass(frozen=True)
class GroupPhysiology:
    """One ACDC group's priors: (low, high) ranges drawn per patient, in mm or as fractions."""

    lv_radius_mm: tuple[float, float]  # LV cavity radius R at ED, mid-ventricle
    lv_length_mm: tuple[float, float]  # LV cavity length L at ED, base to apex
    wall_mm: tuple[float, float]  # LV wall thickness W at ED
    ef: tuple[float, float]  # LV ejection fraction
    es_length: tuple[float, float]  # LV length at ES / at ED (longitudinal shortening; kl)
    rv_thickness_mm: tuple[float, float]  # RV crescent thickness H at ED, mid-ventricle
    rvef: tuple[float, float]  # RV ejection fraction


# Ranges follow ACDC's group statistics (LVEDV ~ 130 NOR, ~ 285 DCM, ~ 130 HCM, ~ 170 MINF, ~ 110 RV ml;
# RVEDV ~ 150-200 ml). The key order is the order groups cycle through in `write_phantom`.
PHYSIOLOGY: dict[str, GroupPhysiology] = {
    "NOR": GroupPhysiology(lv_radius_mm=(24.0, 29.0), lv_length_mm=(80.0, 95.0), wall_mm=(6.5, 9.0),
                           ef=(0.55, 0.7), es_length=(0.82, 0.9), rv_thickness_mm=(21.0, 30.0), rvef=(0.45, 0.62)),
    "DCM": GroupPhysiology(lv_radius_mm=(32.0, 38.0), lv_length_mm=(95.0, 110.0), wall_mm=(5.5, 8.0),
                           ef=(0.13, 0.33), es_length=(0.94, 0.98), rv_thickness_mm=(22.0, 32.0), rvef=(0.2, 0.45)),
    "HCM": GroupPhysiology(lv_radius_mm=(22.0, 28.0), lv_length_mm=(76.0, 90.0), wall_mm=(10.0, 14.0),
                           ef=(0.62, 0.8), es_length=(0.84, 0.92), rv_thickness_mm=(20.0, 28.0), rvef=(0.5, 0.65)),
    "MINF": GroupPhysiology(lv_radius_mm=(27.0, 32.0), lv_length_mm=(85.0, 100.0), wall_mm=(7.5, 10.0),
                            ef=(0.25, 0.44), es_length=(0.92, 0.97), rv_thickness_mm=(20.0, 28.0), rvef=(0.4, 0.6)),
    "RV": GroupPhysiology(lv_radius_mm=(22.0, 26.0), lv_length_mm=(76.0, 90.0), wall_mm=(5.5, 8.0),
                          ef=(0.45, 0.62), es_length=(0.84, 0.92), rv_thickness_mm=(30.0, 40.0), rvef=(0.18, 0.38)),
}
GROUPS: tuple[str, ...] = tuple(PHYSIOLOGY)  # NOR, DCM, HCM, MINF, RV

# LV shape priors, drawn per patient: (low, high) ranges; "harmonics" are the relative amplitudes
# of an outline's cos(k theta) terms (`shapes.fourier`).
EPI_APEX_WALLS = (0.7, 1.1)  # the epicardial apex lies this many wall thicknesses beyond the cavity's
PROFILE_POWER = (2.0, 2.8)  # long-axis profile exponent: 2 = ellipsoid, larger = blunter apex
SEPTUM_DEG = (172.0, 10.0)  # direction LV -> RV in the image plane (deg): normal mean, sd
BASE_HARMONICS = (0.06, 0.03, 0.015)  # LV outline at the base (k = 2, 3, 4) ...
APEX_HARMONICS = (0.08, 0.04, 0.02)  # ... and at the apex, interpolated in between
ES_HARMONICS = (0.05, 0.03, 0.02, 0.015)  # extra deformation of the cavity at ES
WALL_HARMONICS = (0.08, 0.05)  # wall thickness around the LV (k = 1, 2)
MAX_ES_AREA = 0.98  # first guess of the radial contraction: ES/ED cavity area at most this
# Disease patterns.
HCM_SEPTAL_EXCESS = (0.2, 0.6)  # HCM: extra septal wall thickness (fraction of the wall) ...
HCM_SEPTAL_WIDTH_RAD = (0.9, 1.5)  # ... tapering to none over this half-width (rad)
INFARCT_OFFSET_RAD = (-1.6, 1.6)  # MINF: infarct centre relative to the lateral wall (rad)
INFARCT_HALF_WIDTH_DEG = (45, 80)  # its angular half-width (deg)
INFARCT_THINNING = (0.35, 0.55)  # wall lost at its centre (fraction)
INFARCT_AKINESIA = (0.7, 1.0)  # radial motion lost at its centre (fraction)
INFARCT_START, INFARCT_END = (0.0, 0.3), (0.7, 1.0)  # its extent along the LV length (fraction of L)
INFARCT_EDGE = 6  # beyond its ends the wall recovers over 1/INFARCT_EDGE of L
# RV crescent, hinged on the septum.
RV_HALF_WIDTH_DEG = ((65, 90), (55, 80))  # angular half-widths towards the anterior / inferior insertion
RV_GROUP_WIDEN = 1.15  # RV group: the crescent wraps further around the LV
RV_MAX_HALF_WIDTH_DEG = 100  # ... but never beyond this
RV_PROFILE_POWER = (0.4, 0.7)  # exponent of the cos profile across the crescent (< 1: fuller)
RV_LENGTH = (0.7, 0.88)  # RV length below the LV base (fraction of L)
RV_ABOVE_MM = (8.0, 18.0)  # RV outflow extends this far above the LV base
RV_HARMONICS = (0.1, 0.07, 0.04)  # RV outline (k = 1, 2, 3)
RV_WALL_MM = (2.5, 4.0)  # RV free wall (painted as myocardium, not labelled)
RV_TAPER_POWER = 2.2  # towards its apex the RV thins as sqrt(1 - x^p), x = depth / RV length
RV_BASE_FLARE = 0.15  # and is 15 % larger at the base, 15 % smaller at its apex (linear in depth)
RV_TIP_EXTENT = 0.4  # angular extent left at the RV apex (fraction of the basal one)
RV_ES_NARROWING = 0.93  # angular extent at ES / at ED
RV_MIN_VISIBLE_MM = 2.0  # a thinner crescent is not drawn
RV_BODY_PROFILE = 0.35  # away from its tips (profile above this) the crescent is at least ...
RV_BODY_MIN_MM, RV_BODY_OF_MAX = 4.5, 0.8  # ... min(4.5 mm, 0.8 x its thickest): ~2 px, connected
# Epicardial fat, in mm: a thin layer, thicker in the AV/interventricular grooves and towards the chest.
FAT_BASE_MM = (0.0, 1.2)
FAT_GROOVE_MM, FAT_GROOVE_RAD = (2.0, 8.0), 0.45  # in the grooves at the RV insertions, half-width (rad)
FAT_SEPTAL_MM, FAT_SEPTAL_RAD = (0.0, 3.0), 1.0  # in front of the septum, half-width (rad)
FAT_HARMONICS = (0.3, 0.3, 0.2, 0.2, 0.2)  # fat outline (k = 3 ... 7)
# Dark structures inside the cavity, labelled as cavity (ACDC).
PAP_OFFSET_DEG = ((35, 55), (45, 70))  # papillary muscles either side of the lateral wall (deg)
PAP_RADIUS_MM = (2.5, 4.5)
PAP_ZONE = (0.15, 0.8)  # they exist between these depths (fraction of L), largest midway
PAP_ES_GROWTH = 1.35  # thicker at ES
PAP_INSET = 0.6  # centre this many radii inside the endocardium
TRAB_COUNT = (3, 10)  # trabeculae per heart (integers, high exclusive), doubled in DCM and MINF
TRAB_RADIUS_MM = (0.6, 1.8)
TRAB_INSET = (0.0, 0.8)  # how deep each sits inside the endocardium (see `section`)
TRAB_ES_GROWTH = 1.3  # thicker at ES
# LV outflow tract: a gap in the basal wall, in some patients.
LVOT_ANGLE_DEG = (35, 65)  # from the septum
LVOT_HALF_WIDTH_DEG = (14, 24)
LVOT_PROBABILITY = 0.4
LVOT_DEPTH_MM = 6.0  # open down to this depth below the base
# Pose: the long axis is not exactly perpendicular to the slices and the apex points to the chest wall.
DRIFT_MM = ((-14, 4), (8, 30))  # LV centre shift from base to apex (u, v)
TWIST_SD_DEG = 8  # rotation from base to apex
ES_SHIFT_SD_MM = 1.5  # the whole heart moves a little between ED and ES
# Geometric floors.
CAVITY_END_PROFILE = 0.05  # the cavity ends where its long-axis profile falls below this
MIN_WALL_ED_MM, MIN_WALL_ES_MM = 2.5, 3.0  # the wall is never thinner than this
MIN_CAVITY_MM = 0.5  # a cavity thinner than this anywhere is not drawn
KR_BRACKET, KR_BISECTIONS = (0.2, 0.995), 25  # search range and steps of the ES radial contraction
# Above the LV base: the outline the RV wraps around, and an unlabelled atrium.
BASE_REF_SCALE = 0.95  # reference outline = basal epicardium x this
ATRIUM_RADIUS = 0.55  # atrium radius (fraction of R) at the base, growing by ...
ATRIUM_GROWTH, ATRIUM_GROWTH_MM = 0.3, 10.0  # ... this fraction of R over this height above it
ATRIUM_OFFSET_MM = 8.0  # its centre lies this far from the LV centre, away from the septum
# Rendering.
PERICARDIUM_MM = 1.2  # dark pericardial line outside the fat
PERICARDIUM_SIGNAL = 0.1  # its signal (fraction of blood)
FAT_REACH, BOX_PAD_MM = 1.3, 8.0  # the heart's box reaches the outline + fat x 1.3 + 8 mm
LVOT_BEYOND_EPI_MM = 1.0  # the outflow gap reaches this far beyond the epicardium


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
    """Geometry of one patient's ventricles at ED and ES as a function of depth below the ED base.

    Short names follow the model: R, L, W are the LV cavity radius, cavity length and wall (mm, ED);
    kl and kr the ES/ED scales along and across the long axis; H the RV crescent thickness (mm).
    """

    def __init__(self, rng: np.random.Generator, group: str):
        g = PHYSIOLOGY[group]
        self.group = group
        self.R, self.L, self.W = draw(rng, g.lv_radius_mm), draw(rng, g.lv_length_mm), draw(rng, g.wall_mm)
        self.L_epi = self.L + self.W * draw(rng, EPI_APEX_WALLS)
        self.p = draw(rng, PROFILE_POWER)
        self.ef, self.kl = draw(rng, g.ef), draw(rng, g.es_length)
        self.rvef = draw(rng, g.rvef)
        self.septum = math.radians(rng.normal(*SEPTUM_DEG))  # direction LV -> RV in the image plane
        # Shapes at base and apex, interpolated in between.
        self.shape = [fourier(rng, BASE_HARMONICS), fourier(rng, APEX_HARMONICS)]
        self.shape_es = fourier(rng, ES_HARMONICS)
        wall = fourier(rng, WALL_HARMONICS, k0=1)
        if group == "HCM":  # asymmetric septal hypertrophy
            wall = wall * (1 + draw(rng, HCM_SEPTAL_EXCESS) * bump(self.septum, draw(rng, HCM_SEPTAL_WIDTH_RAD)))
        self.akinesia = np.zeros(N_THETA)
        self.infarct_depth = (0.0, 1.0)
        if group == "MINF":  # thinned, akinetic infarct sector away from the septum
            centre = self.septum + np.pi + draw(rng, INFARCT_OFFSET_RAD)
            sector = bump(centre, math.radians(draw(rng, INFARCT_HALF_WIDTH_DEG)))
            wall = wall * (1 - draw(rng, INFARCT_THINNING) * sector)
            self.akinesia = draw(rng, INFARCT_AKINESIA) * sector
            self.infarct_depth = (draw(rng, INFARCT_START), draw(rng, INFARCT_END))  # along the long axis
        self.wall = wall
        # Radial contraction: continuous-volume value here, tuned to the actual slices by `calibrate`.
        self.kr = math.sqrt(min(MAX_ES_AREA, (1 - self.ef) / self.kl))
        # RV crescent: thickness H, angular half-widths towards the anterior/inferior insertions.
        self.H = draw(rng, g.rv_thickness_mm)
        self.delta = tuple(math.radians(draw(rng, r)) for r in RV_HALF_WIDTH_DEG)
        if group == "RV":
            self.delta = (self.delta[0] * RV_GROUP_WIDEN, self.delta[1] * RV_GROUP_WIDEN)
        self.gamma = draw(rng, RV_PROFILE_POWER)
        self.L_rv = self.L * draw(rng, RV_LENGTH)
        self.rv_above = draw(rng, RV_ABOVE_MM)
        self.rv_shape = fourier(rng, RV_HARMONICS, k0=1)
        self.rv_wall = draw(rng, RV_WALL_MM)
        grooves = (bump(self.septum + self.delta[0], FAT_GROOVE_RAD)
                   + bump(self.septum - self.delta[1], FAT_GROOVE_RAD))
        self.fat = draw(rng, FAT_BASE_MM) + draw(rng, FAT_GROOVE_MM) * grooves
        self.fat = self.fat + draw(rng, FAT_SEPTAL_MM) * bump(self.septum, FAT_SEPTAL_RAD)  # towards the chest wall
        self.fat_shape = fourier(rng, FAT_HARMONICS, k0=3)
        lateral = self.septum + np.pi
        self.pap = [(lateral - math.radians(draw(rng, PAP_OFFSET_DEG[0])), draw(rng, PAP_RADIUS_MM)),
                    (lateral + math.radians(draw(rng, PAP_OFFSET_DEG[1])), draw(rng, PAP_RADIUS_MM))]
        n_trab = int(rng.integers(*TRAB_COUNT)) * (2 if group in ("DCM", "MINF") else 1)
        self.trab = [(rng.uniform(0, 2 * np.pi), draw(rng, TRAB_RADIUS_MM), draw(rng, TRAB_INSET))
                     for _ in range(n_trab)]
        self.lvot = (self.septum + math.radians(draw(rng, LVOT_ANGLE_DEG)),
                     math.radians(draw(rng, LVOT_HALF_WIDTH_DEG)))
        self.has_lvot = rng.random() < LVOT_PROBABILITY
        self.drift = np.array([draw(rng, DRIFT_MM[0]), draw(rng, DRIFT_MM[1])])
        self.twist = math.radians(rng.normal(0, TWIST_SD_DEG))
        self.es_shift = rng.normal(0, ES_SHIFT_SD_MM, size=2)

    def _profile(self, x: float) -> float:
        """Long-axis profile at fraction x of a length: 1 at the base, 0 at the apex (superellipse)."""
        return math.sqrt(1.0 - max(x, 0.0) ** self.p) if x < 1.0 else 0.0

    def _shape(self, zeta: float) -> np.ndarray:
        """Outline modulation at depth zeta: base and apex shapes blended linearly."""
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
            wall = self.wall + (1 - self.wall) * min(1.0, min(abs(t - lo), abs(t - hi)) * INFARCT_EDGE)
        epi = (self.R + self.W * wall) * self._profile(zeta / self.L_epi) * shape
        pe = self._profile(t)
        if pe < CAVITY_END_PROFILE:
            return None, epi
        endo = np.minimum(self.R * pe * shape, epi - MIN_WALL_ED_MM)
        return (endo if endo.min() > MIN_CAVITY_MM else None), epi

    def _rv_profile(self, z: float, es: bool) -> tuple[np.ndarray, float]:
        """Unscaled crescent thickness over theta and its size factor at depth z below the base.

        Towards its apex the RV narrows in extent as well as thickness (a cone, not a thinning sheet).
        """
        x = max(z, 0.0) / self.L_rv
        taper = math.sqrt(max(0.0, 1 - x ** RV_TAPER_POWER))
        size = (1 + RV_BASE_FLARE * (1 - 2 * x)) * taper
        widen = (1 + RV_BASE_FLARE * (1 - 2 * x)) * (RV_TIP_EXTENT + (1 - RV_TIP_EXTENT) * taper) * (
            RV_ES_NARROWING if es else 1.0)
        d = np.angle(np.exp(1j * (THETA - self.septum)))
        w = np.minimum(np.where(d >= 0, self.delta[0], self.delta[1]) * widen, math.radians(RV_MAX_HALF_WIDTH_DEG))
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
        endo_es = np.minimum(endo_es, epi_es - MIN_WALL_ES_MM)
        return (endo_es if endo_es.min() > MIN_CAVITY_MM else None), epi_es

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
        lo, hi = KR_BRACKET
        for _ in range(KR_BISECTIONS):  # bisection: the ES volume grows with kr
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
            sec.atrium = self.R * (ATRIUM_RADIUS + ATRIUM_GROWTH * min(1.0, -z_ed / ATRIUM_GROWTH_MM))
        base_epi = (self.R + self.W) * self._shape(0.0) * BASE_REF_SCALE
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
            if h.max() > RV_MIN_VISIBLE_MM:
                # A thin but connected crescent: at least ~2 pixels thick away from its tips.
                sec.rv = sec.ref + np.where(prof > RV_BODY_PROFILE,
                                            np.maximum(h, min(RV_BODY_MIN_MM, RV_BODY_OF_MAX * h.max())), h)
        if endo is not None:
            frac = z_ed / self.L
            grow = TRAB_ES_GROWTH if es else 1.0
            for theta, size, depth in self.trab:
                r = size * grow * (0.8 + 0.6 * frac)  # larger towards the apex
                rho = float(lookup(endo, np.array([theta]))[0]) - (0.2 + 0.6 * depth) * r  # 0.2-0.68 r inside
                if rho > r:
                    sec.dark.append((theta, rho, r))
            if PAP_ZONE[0] < frac < PAP_ZONE[1]:
                taper = math.sin(math.pi * (frac - PAP_ZONE[0]) / (PAP_ZONE[1] - PAP_ZONE[0]))
                for theta, rad in self.pap:
                    r = rad * (0.5 + 0.5 * taper) * (PAP_ES_GROWTH if es else 1.0)  # half size at the zone's ends
                    rho = float(lookup(endo, np.array([theta]))[0]) - PAP_INSET * r
                    if rho > r:
                        sec.dark.append((theta, rho, r))
            if self.has_lvot and z_ed < LVOT_DEPTH_MM:
                sec.lvot = self.lvot
        return sec


def render_heart(canvas: Canvas, heart: Heart, zetas: list[float], phase: str, centre: np.ndarray,
                 rot: float) -> tuple[np.ndarray, tuple[slice, slice], np.ndarray]:
    """Paint the heart (averaged over sub-slices: through-plane partial volume); return its label box.

    Returns the painted image box, the box, and label fractions (4, ...) for background/RV/MYO/LV.
    """
    sections = [heart.section(zeta, phase) for zeta in zetas]
    reach = max(float(np.max(s.rv if s.rv is not None else s.ref)) + float(heart.fat.max()) * FAT_REACH + BOX_PAD_MM
                for s in sections)
    box = canvas.box(tuple(centre), reach)
    u = canvas.u[box] - centre[0]
    v = canvas.v[box] - centre[1]
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u) - rot
    px = canvas.px
    base = canvas.img[box].copy()
    img_acc = np.zeros_like(base)
    frac_acc = np.zeros((NUM_CLASSES,) + base.shape)
    tis = canvas.tissue
    for sec in sections:
        img = base.copy()
        frac = np.zeros_like(frac_acc)
        frac[BG] = 1.0

        def paint(alpha, tissue, label, level=None):
            img[...] += alpha * (canvas.value(tissue, box, level) - img)
            frac[...] *= 1 - alpha
            frac[label] += alpha

        outline = sec.ref if sec.epi is None else sec.epi
        if sec.rv is not None:
            outline = np.maximum(outline, sec.rv + heart.rv_wall)
        if sec.epi is not None or sec.rv is not None or sec.atrium > 0:
            fat_r = lookup(outline + heart.fat * heart.fat_shape, theta)
            paint(soft(rho - fat_r - PERICARDIUM_MM, px), "muscle", BG, level=PERICARDIUM_SIGNAL * tis["blood"])
            paint(soft(rho - fat_r, px), "fat", BG)
        if sec.rv is not None:
            rv_r = lookup(sec.rv, theta)
            paint(soft(rho - rv_r - heart.rv_wall, px), "myocardium", BG)  # RV free wall, not labelled
            paint(soft(rho - rv_r, px), "blood", RV, level=tis["blood_rv"])
        if sec.epi is None and sec.atrium > 0:  # above the LV base: AV-groove fat and an atrium
            paint(soft(rho - lookup(sec.ref, theta), px), "fat", BG)
            a = rot + heart.septum + np.pi
            d_at = np.hypot(u - ATRIUM_OFFSET_MM * math.cos(a), v - ATRIUM_OFFSET_MM * math.sin(a))
            paint(soft(d_at - sec.atrium, px), "blood", BG)
        if sec.epi is not None:
            paint(soft(rho - lookup(sec.epi, theta), px), "myocardium", MYO)
        if sec.endo is not None:
            inside = soft(rho - lookup(sec.endo, theta), px)
            paint(inside, "blood", LV)
            if sec.dark:  # papillary muscles and trabeculae: dark, but labelled as cavity (ACDC)
                near = np.nonzero(inside > 0)
                th, r_c, r = (np.array(x)[:, None] for x in zip(*sec.dark))
                d = np.hypot(u[near] - r_c * np.cos(th + rot), v[near] - r_c * np.sin(th + rot)) - r
                dark = np.zeros_like(inside)
                dark[near] = inside[near] * soft(d.min(axis=0), px)
                paint(dark, "myocardium", LV)
            if sec.lvot is not None:  # open outflow: blood through the wall, labelled as cavity
                dth = np.abs(np.angle(np.exp(1j * (theta - sec.lvot[0]))))
                sector = soft((dth - sec.lvot[1]) * np.maximum(rho, 1.0), px)
                paint(sector * soft(rho - lookup(sec.epi, theta) - LVOT_BEYOND_EPI_MM, px), "blood", LV)
        img_acc += img
        frac_acc += frac
    n = len(zetas)
    return img_acc / n, box, frac_acc / n
