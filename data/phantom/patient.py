"""One phantom patient: anatomy, scanner and slice stack drawn from one seed, rendered at ED and ES."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data.phantom.acquisition import STYLES, TEXTURE, Acquisition, ScannerStyle, scanner_style, tissue_levels
from data.phantom.anatomy import BG, GROUPS, LV, MYO, RV, Heart, render_heart
from data.phantom.canvas import Canvas
from data.phantom.torso import Torso, render_torso

# The person and the cine (Info.cfg), drawn per patient.
HEIGHT_CM = (152, 195)  # uniform, rounded to whole cm
BMI, BMI_LIMITS = (26, 4), (18, 40)  # normal (mean, sd) in kg/m^2, clipped to these limits
FRAMES = (25, 36)  # cine frames per cycle (integers, high exclusive)
ES_PHASE = (0.3, 0.44)  # ES frame as a fraction of the cycle (ED is frame 1)
# Pose of the scene in the field of view.
HEART_PLACE = ((0.4, 0.54), (0.42, 0.56))  # LV centre as a fraction of the field of view (X, Y)
UPRIGHT_PROBABILITY, TILT_SD_DEG = 0.7, 12  # mostly a small normal tilt of the whole scene ...
STRONG_TILT_DEG = (20, 40)  # ... else a strong one, either way
BREATH_HOLD_SD_MM = 1.5  # per-slice shift of the scene: breath holds differ
# The slice stack, from above the base to about the apex (mm along the slice normal).
FIRST_SLICE_MM = (-3.0, 7.0)  # first slice relative to the ED base (< 0: above it)
APEX_MARGIN_MM = 3.0  # slices stop within this of the epicardial apex ...
SLICE_COUNT = (8, 13)  # ... within these bounds
EXTRA_SLICE_PROBABILITY = 0.15  # one slice beyond the apex, as some ACDC stacks have
RV_END_MM = 8.0  # the RV ends at least this far above the last slice
APEX_T_MAX = 1.1  # depth fraction (of L) at which drift and twist stop growing
SPECK_MAX_PX = 4  # label islands this small, beside a larger one, are removed


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
        """Frame number of each phase: the file names are patientNNN_frameFF.nii.gz."""
        return {"ED": int(self.info["ED"]), "ES": int(self.info["ES"])}


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
        style = scanner_style(style)
    group = group if group is not None else str(anat.choice(GROUPS))
    if group not in GROUPS:
        raise ValueError(f"group: unknown group {group!r}; expected one of {list(GROUPS)}")

    height = float(np.round(anat.uniform(*HEIGHT_CM)))
    bmi = float(np.clip(anat.normal(*BMI), *BMI_LIMITS))
    weight = float(np.round(bmi * (height / 100) ** 2))
    n_frames = int(anat.integers(*FRAMES))
    es_frame = int(round(n_frames * anat.uniform(*ES_PHASE))) + 1
    heart = Heart(anat, group)
    torso = Torso(anat, heart, bmi)
    # Where the heart sits in the field of view and how the whole scene is rotated.
    place = (anat.uniform(*HEART_PLACE[0]), anat.uniform(*HEART_PLACE[1]))
    if anat.random() < UPRIGHT_PROBABILITY:
        tilt = anat.normal(0, TILT_SD_DEG)
    else:
        tilt = anat.choice([-1, 1]) * anat.uniform(*STRONG_TILT_DEG)
    scene_angle = math.radians(tilt)

    scan = np.random.default_rng(scan_seed)
    acq = Acquisition.draw(scan, style)
    tissue = tissue_levels(scan, style)
    texture = {k: (a * style.texture, b * style.texture) for k, (a, b) in TEXTURE.items()}

    dz = acq.spacing[2]
    zeta0 = anat.uniform(*FIRST_SLICE_MM)
    n_slices = int(np.clip((heart.L_epi - APEX_MARGIN_MM - zeta0) // dz + 1, *SLICE_COUNT))
    if n_slices < SLICE_COUNT[1] and anat.random() < EXTRA_SLICE_PROBABILITY:
        n_slices += 1
    zetas = zeta0 + dz * np.arange(n_slices)
    heart.L_rv = min(heart.L_rv, zetas[-1] - RV_END_MM)
    sub = [-acq.thickness / 3, 0.0, acq.thickness / 3]  # 3 samples across the slice: through-plane partial volume
    heart.calibrate([z + s for z in zetas for s in sub])
    origin = np.array([place[0] * acq.shape[0] * acq.spacing[0], place[1] * acq.shape[1] * acq.spacing[1]])
    jitter = anat.normal(0, BREATH_HOLD_SD_MM, size=(n_slices, 2))
    field_ = acq.fields(torso.body, origin, scene_angle, np.zeros(2))

    images = {p: np.zeros(acq.shape + (n_slices,), np.float32) for p in ("ED", "ES")}
    masks = {p: np.zeros(acq.shape + (n_slices,), np.uint8) for p in ("ED", "ES")}
    slice_seeds = anat.integers(0, 2 ** 63, size=(n_slices, 2))  # textures, background details
    for k, zeta in enumerate(zetas):
        t = float(np.clip(zeta / heart.L, 0, APEX_T_MAX))
        canvas = Canvas(acq.shape, acq.spacing[:2], origin + jitter[k], scene_angle, tissue, texture,
                         np.random.default_rng(slice_seeds[k, 0]))
        render_torso(canvas, torso, zeta, t, np.random.default_rng(slice_seeds[k, 1]))
        for phase in ("ED", "ES"):
            centre = heart.drift * (t - 0.5) + (heart.es_shift if phase == "ES" else 0.0)
            rot = heart.twist * (t - 0.5)
            img_box, box, frac = render_heart(canvas, heart, [zeta + s for s in sub], phase, centre, rot)
            img = canvas.img.copy()
            img[box] = img_box
            images[phase][:, :, k] = acq.acquire(img, field_, scan)
            masks[phase][box + (k,)] = _drop_specks(np.argmax(frac, axis=0).astype(np.uint8))

    info = {"ED": 1, "ES": es_frame, "Group": group, "Height": height, "NbFrame": n_frames, "Weight": weight}
    affine = np.diag([acq.spacing[0], acq.spacing[1], acq.spacing[2], 1.0])
    return PhantomPatient(group=group, style=style.name, info=info, affine=affine, images=images, masks=masks)


def _drop_specks(labels: np.ndarray, max_size: int = SPECK_MAX_PX) -> np.ndarray:
    """Remove isolated few-pixel islands that partial volume leaves at thin tips (e.g. of the RV)."""
    for label in (RV, MYO, LV):
        comp, n = ndimage.label(labels == label)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            small = (sizes <= max_size) & (np.arange(sizes.size) > 0) & (sizes < sizes[1:].max())
            labels[small[comp]] = BG
    return labels
