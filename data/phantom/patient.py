"""One phantom patient: anatomy, scanner and slice stack drawn from one seed, rendered at ED and ES."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data.phantom.acquisition import STYLES, TEXTURE, Acquisition, ScannerStyle, tissue_levels
from data.phantom.anatomy import GROUP_PARAMS, GROUPS, Heart, render_heart
from data.phantom.canvas import Canvas
from data.phantom.torso import Torso, render_torso


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
    if group not in GROUP_PARAMS:
        raise ValueError(f"group: unknown group {group!r}; expected one of {list(GROUPS)}")

    height = float(np.round(anat.uniform(152, 195)))
    bmi = float(np.clip(anat.normal(26, 4), 18, 40))
    weight = float(np.round(bmi * (height / 100) ** 2))
    n_frames = int(anat.integers(25, 36))
    es_frame = int(round(n_frames * anat.uniform(0.3, 0.44))) + 1
    heart = Heart(anat, group)
    torso = Torso(anat, heart, bmi)
    # Where the heart sits in the field of view and how the whole scene is rotated.
    place = (anat.uniform(0.4, 0.54), anat.uniform(0.42, 0.56))
    tilt = anat.normal(0, 12) if anat.random() < 0.7 else anat.choice([-1, 1]) * anat.uniform(20, 40)
    scene_angle = math.radians(tilt)

    scan = np.random.default_rng(scan_seed)
    acq = Acquisition.draw(scan, style)
    tissue = tissue_levels(scan, style)
    texture = {k: (a * style.texture, b * style.texture) for k, (a, b) in TEXTURE.items()}

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


def _drop_specks(labels: np.ndarray, max_size: int = 4) -> np.ndarray:
    """Remove isolated few-pixel islands that partial volume leaves at thin tips (e.g. of the RV)."""
    for label in (1, 2, 3):
        comp, n = ndimage.label(labels == label)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            small = (sizes <= max_size) & (np.arange(sizes.size) > 0) & (sizes < sizes[1:].max())
            labels[small[comp]] = 0
    return labels
