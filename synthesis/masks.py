"""New anatomies for synthesis: where the label stacks that generators turn into images come from.

Three sources, mixed by weight:

* ``real``     - the training masks as they are (no filter: they are the reference);
* ``deformed`` - a training mask under one random affine + smooth elastic warp shared by the whole stack, so the
                 slices stay consistent with each other (a new heart, not a pile of unrelated slices);
* ``sampled``  - a stack drawn from a PCA model of signed distance maps (`synthesis.shape_model`).

Generated stacks (``deformed``, ``sampled``) must pass `plausibility_problems`, a set of per-slice topology checks
(LV cavity enclosed by myocardium, RV against the septum, one piece per structure, no holes); rejections are
counted by reason so a run can report how often a source produced nonsense.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy import ndimage

from data.types import NUM_CLASSES, PreparedCase

if TYPE_CHECKING:
    from synthesis.shape_model import ShapeModel

BG, RV, MYO, LV = 0, 1, 2, 3
SOURCES: tuple[str, ...] = ("real", "deformed", "sampled")

# Reasons a stack is implausible; `plausibility_problems` reports them per slice.
NO_HEART = "no LV or MYO in any slice"
LV_WITHOUT_MYO = "LV without MYO"
LV_NOT_ENCLOSED = "LV not enclosed by MYO"
RV_FAR = "RV far from septum"
SPLIT = "{} in {} pieces"
HOLE = "hole in {}"

_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-neighbourhood: what "touching" means for the enclosure test
_SQUARE = ndimage.generate_binary_structure(2, 2)  # 8-neighbourhood: a thin myocardium stays one piece


@dataclass
class DeformConfig:
    """One random in-plane warp per stack: affine about the heart's centre plus a smooth elastic field."""

    rotation_deg: float = field(default=15.0, metadata={"min": 0.0, "max": 180.0,
                                "help": "largest rotation (degrees) about the heart's centre"})
    scale: float = field(default=0.1, metadata={"min": 0.0, "max": 0.5,
                         "help": "isotropic scale drawn from [1 - scale, 1 + scale]"})
    anisotropy: float = field(default=0.05, metadata={"min": 0.0, "max": 0.5,
                              "help": "extra per-axis scale drawn from [1 - a, 1 + a]"})
    shear: float = field(default=0.05, metadata={"min": 0.0, "max": 0.5, "help": "largest shear factor"})
    translate_px: float = field(default=4.0, metadata={"min": 0.0, "help": "largest shift (pixels) per axis"})
    elastic_px: float = field(default=4.0, metadata={"min": 0.0,
                              "help": "largest displacement (pixels) of the smooth elastic field"})
    elastic_sigma_px: float = field(default=12.0, metadata={"min": 1.0,
                                    "help": "smoothness (Gaussian sigma, pixels) of the elastic field"})
    slice_variation: float = field(default=0.25, metadata={"min": 0.0, "max": 1.0,
                                   "help": "part of the elastic field that changes (slowly) from slice to slice; "
                                           "0 = the same warp on every slice"})
    slice_sigma: float = field(default=2.0, metadata={"min": 0.5,
                               "help": "correlation length (slices) of the slice-varying part"})


@dataclass
class MaskConfig:
    """Where the masks of a synthetic dataset come from."""

    source_mix: dict[str, float] = field(default_factory=lambda: {"real": 0.5, "deformed": 0.5}, metadata={
        "help": f"relative weight of each mask source, keys from {list(SOURCES)}"})
    max_tries: int = field(default=20, metadata={"min": 1,
                           "help": "generated stacks tried per volume before giving up with an error"})
    rv_gap_px: float = field(default=3.0, metadata={"min": 0.0,
                             "help": "largest gap (pixels) between RV and myocardium still counted as touching"})
    tolerance_px: int = field(default=1, metadata={"min": 0,
                              "help": "defects up to this many pixels (stray pixel, one-pixel leak) are ignored"})
    deform: DeformConfig = field(default_factory=DeformConfig)
    shape_components: int = field(default=8, metadata={"min": 1,
                                  "help": "PCA modes of the `sampled` shape model"})


@dataclass
class MaskDraw:
    """One label stack for one synthetic volume, with where it came from (for the manifest)."""

    mask: np.ndarray  # (S, H, W) uint8
    source: str
    source_case: str
    seed: int  # reproduces the stack: deform_stack / ShapeModel.sample with default_rng(seed); 0 for `real`
    slice_spacing_mm: float | None = None
    inplane_spacing_mm: float | None = None
    image: np.ndarray | None = None  # (S, H, W) the real slices the mask comes from, warped alike; None if sampled


@dataclass
class SourceStats:
    tried: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> rejected stacks (once per reason and stack)


@dataclass
class RejectionReport:
    """How many stacks each source generated and why the rejected ones failed."""

    sources: dict[str, SourceStats] = field(default_factory=dict)
    excluded_cases: list[str] = field(default_factory=list)  # real masks too implausible to deform or model

    def stats(self, source: str) -> SourceStats:
        return self.sources.setdefault(source, SourceStats())

    def rejection_rate(self, source: str) -> float:
        s = self.sources.get(source)
        return (s.tried - s.accepted) / s.tried if s and s.tried else 0.0

    def as_dict(self) -> dict:
        return {"excluded_cases": list(self.excluded_cases),
                "sources": {name: {"tried": s.tried, "accepted": s.accepted, "rejected": dict(s.rejected)}
                            for name, s in self.sources.items()}}

    def format(self) -> str:
        lines = []
        for name, s in self.sources.items():
            lines.append(f"{name}: {s.accepted}/{s.tried} accepted ({100 * self.rejection_rate(name):.1f}% rejected)")
            lines += [f"  {n:4d} x {reason}" for reason, n in s.rejected.most_common()]
        if self.excluded_cases:
            lines.append(f"{len(self.excluded_cases)} implausible real masks not used as templates: "
                         + ", ".join(self.excluded_cases))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- deformation
def deform_stack(mask: np.ndarray, rng: np.random.Generator, cfg: DeformConfig | None = None) -> np.ndarray:
    """Warp a (S, H, W) label stack with one random in-plane deformation shared by all slices.

    Labels are resampled as one-hot channels with linear interpolation and put back together by argmax, which keeps
    a 1-2 pixel myocardium connected where nearest-neighbour sampling would break it.
    """
    return deform_pair(mask, None, rng, cfg)[0]


def deform_pair(mask: np.ndarray, image: np.ndarray | None, rng: np.random.Generator,
                cfg: DeformConfig | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """`deform_stack`, and the image under the very same warp (linear, edges extended), so the two stay a pair;
    the same rng state gives the same mask with or without an image."""
    cfg = cfg or DeformConfig()
    mask = _check_stack(mask)
    n_slices, h, w = mask.shape
    dy, dx = _displacement(mask, rng, cfg)  # (S, H, W) each: where every output pixel samples the input
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    zz = np.broadcast_to(np.arange(n_slices, dtype=np.float32)[:, None, None], mask.shape)
    coords = np.stack([zz, yy[None] + dy, xx[None] + dx])  # integer z: each slice samples only itself
    channels = [ndimage.map_coordinates((mask == label).astype(np.float32), coords, order=1, mode="constant",
                                        cval=1.0 if label == BG else 0.0)
                for label in range(NUM_CLASSES)]
    warped = None
    if image is not None:
        image = np.asarray(image, dtype=np.float32)
        if image.shape != mask.shape:
            raise ValueError(f"image: expected the mask's shape {mask.shape}, got {image.shape}")
        warped = ndimage.map_coordinates(image, coords, order=1, mode="nearest").astype(np.float32)
    return np.argmax(np.stack(channels), axis=0).astype(np.uint8), warped


def _displacement(mask: np.ndarray, rng: np.random.Generator, cfg: DeformConfig) -> tuple[np.ndarray, np.ndarray]:
    n_slices, h, w = mask.shape
    fg = np.argwhere(mask > 0)
    cy, cx = fg[:, 1:].mean(axis=0) if len(fg) else ((h - 1) / 2, (w - 1) / 2)
    theta = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    scale = rng.uniform(1 - cfg.scale, 1 + cfg.scale) * rng.uniform(1 - cfg.anisotropy, 1 + cfg.anisotropy, size=2)
    shear = rng.uniform(-cfg.shear, cfg.shear)
    shift = rng.uniform(-cfg.translate_px, cfg.translate_px, size=2)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    matrix = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(1.0 / scale)  # output -> input

    yy, xx = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    src_y = matrix[0, 0] * yy + matrix[0, 1] * xx + cy - shift[0]
    src_x = matrix[1, 0] * yy + matrix[1, 1] * xx + cx - shift[1]
    dy = np.broadcast_to(src_y - (yy + cy), mask.shape).astype(np.float32)
    dx = np.broadcast_to(src_x - (xx + cx), mask.shape).astype(np.float32)

    shared = 1.0 - cfg.slice_variation
    sigma2d, sigma3d = cfg.elastic_sigma_px, (cfg.slice_sigma, cfg.elastic_sigma_px, cfg.elastic_sigma_px)
    for d in (dy, dx):
        elastic = shared * _smooth_noise(rng, (h, w), sigma2d)[None]
        if cfg.slice_variation > 0:
            elastic = elastic + cfg.slice_variation * _smooth_noise(rng, mask.shape, sigma3d)
        d += (cfg.elastic_px * elastic).astype(np.float32)
    return dy, dx


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to a peak of 1, so `elastic_px` is the largest displacement."""
    noise = ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, size=shape), sigma, mode="reflect")
    peak = np.abs(noise).max()
    return noise / peak if peak > 0 else noise


# -------------------------------------------------------------------------------------------------- plausibility
def plausibility_problems(mask: np.ndarray, *, rv_gap_px: float = 3.0, tolerance_px: int = 1) -> list[str]:
    """Why a (S, H, W) label stack does not look like a heart; an empty list means plausible.

    Checked on every slice that holds the structures involved (slices beyond the heart are fine): the LV cavity is
    walled in by myocardium (except on the first and last LV slice: basal slices open onto the outflow tract), the
    RV lies against the septum (within `rv_gap_px`), each structure is one piece (8-connected) and nothing has
    holes (the LV + MYO union included, so a hole through the wall is caught).
    Defects of at most `tolerance_px` pixels (a stray pixel, a one-pixel contact) are ignored: resampled real
    masks have them.
    """
    return [f"{reason} (slice {s})" if s is not None else reason
            for reason, s in _problems(mask, rv_gap_px, tolerance_px)]


def problem_reasons(mask: np.ndarray, *, rv_gap_px: float = 3.0, tolerance_px: int = 1) -> set[str]:
    """The distinct reasons (without slice numbers) a stack is implausible; used for rejection counts."""
    return {reason for reason, _ in _problems(mask, rv_gap_px, tolerance_px)}


def _problems(mask: np.ndarray, rv_gap_px: float, tol: int) -> list[tuple[str, int | None]]:
    mask = _check_stack(mask)
    if not np.isin(mask, (MYO, LV)).any():
        return [(NO_HEART, None)]
    lv_slices = np.flatnonzero((mask == LV).any(axis=(1, 2)))
    ends = {int(lv_slices[0]), int(lv_slices[-1])} if len(lv_slices) else set()
    return [(reason, s) for s, sl in enumerate(mask) for reason in _slice_problems(sl, rv_gap_px, tol, s in ends)]


def _slice_problems(sl: np.ndarray, rv_gap_px: float, tol: int, lv_end: bool) -> list[str]:
    rv, myo, lv = sl == RV, sl == MYO, sl == LV
    problems = []
    if lv.sum() > tol and not myo.any():
        problems.append(LV_WITHOUT_MYO)
    # not on the first/last LV slice: the basal slice often opens onto the outflow tract (in ACDC and the phantom)
    if not lv_end and lv.any() and myo.any() and (ndimage.binary_dilation(lv, _CROSS) & ~(lv | myo)).sum() > tol:
        problems.append(LV_NOT_ENCLOSED)
    if rv.any() and myo.any() and ndimage.distance_transform_edt(~myo)[rv].min() > rv_gap_px + 1:
        problems.append(RV_FAR)
    for name, region in (("RV", rv), ("MYO", myo), ("LV", lv)):
        n = _pieces(region, _SQUARE, tol)
        if n > 1:
            problems.append(SPLIT.format(name, n))
    for name, region in (("RV", rv), ("LV", lv), ("LV+MYO", lv | myo)):
        if region.any() and _pieces(ndimage.binary_fill_holes(region) & ~region, _CROSS, tol):
            problems.append(HOLE.format(name))
    return problems


def _pieces(region: np.ndarray, structure: np.ndarray, tol: int) -> int:
    """Connected pieces of `region` larger than `tol` pixels."""
    labels, n = ndimage.label(region, structure)
    return int((np.bincount(labels.ravel(), minlength=n + 1)[1:] > tol).sum()) if n else 0


def _check_stack(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"mask: expected a (S, H, W) label stack, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() >= NUM_CLASSES):
        raise ValueError(f"mask: expected labels 0..{NUM_CLASSES - 1}, got {sorted(np.unique(mask).tolist())}")
    return mask.astype(np.uint8, copy=False)


# --------------------------------------------------------------------------------------------------------- draws
def draw_masks(source_mix: dict[str, float], cases: Sequence[PreparedCase], n_volumes: int, seed: int,
               cfg: MaskConfig | None = None) -> tuple[list[MaskDraw], RejectionReport]:
    """`n_volumes` label stacks drawn from the sources in `source_mix` (weights, normalised here).

    Each source gets its share by largest remainder, so small runs still honour the mix; draw i depends only on
    (`seed`, i), never on how many tries earlier draws needed. `real` draws walk the cases in a shuffled order
    (all distinct until the cases run out). `deformed` and `sampled` start from the real masks that are plausible
    themselves and keep only stacks that pass `plausibility_problems`; the report counts tries and rejections
    per source. `cfg` holds the other settings (its own `source_mix` is what callers pass as `source_mix`).
    """
    cfg = cfg or MaskConfig()
    weights = check_source_mix(source_mix)
    if n_volumes < 0:
        raise ValueError(f"n_volumes: expected >= 0, got {n_volumes}")
    cases = [c for c in cases if c.mask is not None]
    if not cases:
        raise ValueError("cases: no case has a mask to draw from")
    report = RejectionReport()
    seq = np.random.SeedSequence(seed)
    master = np.random.default_rng(seq)
    sources = master.permutation(_allocate(weights, n_volumes))

    templates = cases
    if any(weights.get(name, 0) > 0 for name in ("deformed", "sampled")):
        plausible = [not problem_reasons(c.mask, rv_gap_px=cfg.rv_gap_px, tolerance_px=cfg.tolerance_px)
                     for c in cases]
        templates = [c for c, ok in zip(cases, plausible) if ok]
        report.excluded_cases = [c.case_id for c, ok in zip(cases, plausible) if not ok]
        if not templates:
            raise ValueError(f"cases: none of the {len(cases)} masks is plausible, so none can be deformed or "
                             f"modelled (first: {plausibility_problems(cases[0].mask)[:3]})")
    shape_model = None
    if weights.get("sampled", 0) > 0:
        from synthesis.shape_model import ShapeModel

        shape_model = ShapeModel.fit([c.mask for c in templates], n_components=cfg.shape_components)

    pools = {"real": cases, "deformed": templates, "sampled": templates}
    order = {name: master.permutation(len(pool)) for name, pool in pools.items()}
    draws: list[MaskDraw] = []
    counters = Counter()
    for source, child in zip(sources, seq.spawn(n_volumes)):
        rng = np.random.default_rng(child)
        pool = pools[source]
        case = pool[order[source][counters[source] % len(pool)]]
        counters[source] += 1
        if source == "real":
            report.stats("real").tried += 1
            report.stats("real").accepted += 1
            draws.append(_draw(case.mask.astype(np.uint8), "real", case, seed=0, image=case.image))
        else:
            draws.append(_generate(source, case, rng, cfg, report, shape_model))
    return draws, report


def _generate(source: str, case: PreparedCase, rng: np.random.Generator, cfg: MaskConfig,
              report: RejectionReport, shape_model: ShapeModel | None) -> MaskDraw:
    """Try up to `cfg.max_tries` stacks from one template; the seed of the accepted one reproduces it."""
    stats = report.stats(source)
    for _ in range(cfg.max_tries):
        try_seed = int(rng.integers(2**31 - 1))
        if source == "deformed":  # the real slices under the same warp, so the pair stays a pair
            stack, image = deform_pair(case.mask, case.image, np.random.default_rng(try_seed), cfg.deform)
        else:  # sampled: the template only lends its number of slices and spacing; no real slice behind it
            stack, image = shape_model.sample(np.random.default_rng(try_seed), n_slices=case.mask.shape[0],
                                              size=case.mask.shape[1:]), None
        stats.tried += 1
        reasons = problem_reasons(stack, rv_gap_px=cfg.rv_gap_px, tolerance_px=cfg.tolerance_px)
        if not reasons:
            stats.accepted += 1
            return _draw(stack, source, case, try_seed, shape_model=source == "sampled", image=image)
        stats.rejected.update(reasons)
    fix = "weaken the deformation" if source == "deformed" else "add shape_components or training cases"
    raise RuntimeError(f"{source}: no plausible stack in {cfg.max_tries} tries from {case.case_id} "
                       f"(most common problems: {stats.rejected.most_common(3)}); {fix} or raise max_tries")


def _draw(mask: np.ndarray, source: str, case: PreparedCase, seed: int, shape_model: bool = False,
          image: np.ndarray | None = None) -> MaskDraw:
    slice_mm, inplane_mm = case_spacing(case)
    return MaskDraw(mask=mask, source=source, source_case="shape_model" if shape_model else case.case_id,
                    seed=seed, slice_spacing_mm=slice_mm, inplane_spacing_mm=inplane_mm,
                    image=None if image is None else np.asarray(image, dtype=np.float32))


def case_spacing(case: PreparedCase) -> tuple[float | None, float | None]:
    """(slice spacing, in-plane spacing) in mm of a prepared case's slices, when its geometry records them."""
    geometry = case.geometry
    if geometry is None or not hasattr(geometry, "original_spacing"):
        return None, None
    return float(geometry.original_spacing[geometry.slice_axis]), float(geometry.target_spacing)


def check_source_mix(source_mix: dict[str, float]) -> dict[str, float]:
    """The mix normalised to weights summing to 1; ValueError naming the bad key (usable at config time)."""
    if not source_mix:
        raise ValueError(f"source_mix: expected weights for some of {list(SOURCES)}, got none")
    for name, weight in source_mix.items():
        if name not in SOURCES:
            raise ValueError(f"source_mix: unknown source {name!r}; expected one of {list(SOURCES)}")
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ValueError(f"source_mix[{name!r}]: expected a weight >= 0, got {weight!r}")
    total = sum(source_mix.values())
    if total <= 0:
        raise ValueError(f"source_mix: weights sum to 0: {source_mix}")
    return {name: float(w) / total for name, w in source_mix.items()}


def _allocate(weights: dict[str, float], n: int) -> list[str]:
    """Exactly n source names in proportion to `weights` (largest remainder; ties by order given)."""
    quotas = {name: w * n for name, w in weights.items()}
    counts = {name: int(q) for name, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda name: counts[name] - quotas[name])
    for name in by_remainder[: n - sum(counts.values())]:
        counts[name] += 1
    return [name for name in weights for _ in range(counts[name])]


def parse_source_mix(text: str) -> dict[str, float]:
    """'real=0.5,deformed=0.5' -> {'real': 0.5, 'deformed': 0.5} (for the command line)."""
    try:
        mix = {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(",") if item.strip())}
    except ValueError as exc:
        raise ValueError(f"source mix: expected 'name=weight,...' such as 'real=0.5,deformed=0.5', got {text!r}") \
            from exc
    check_source_mix(mix)
    return mix
