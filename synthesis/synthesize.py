"""Writing a synthetic dataset: a generator + mask draws -> volumes in the ACDC layout + `manifest.csv`.

Each draw becomes one synthetic VOLUME: all its slices come from one `generator.sample` call with one style seed,
so the stack looks like one scan. The layout is the one the data stage reads (same loader, same preprocessing):

    out_dir/
      manifest.csv                                   written last, atomically
      synth_<generator>_0001/
        Info.cfg                                     "ED: 1", "ES: 1", "Source: synthetic (...)"
        synth_<generator>_0001_frame01.nii.gz        image, float32, x INTENSITY_SCALE (an MR-like range)
        synth_<generator>_0001_frame01_gt.nii.gz     labels, uint8

One phase per volume: a synthetic volume is a single frame, so ED and ES both name frame 01 (the ACDC loader
needs both lines); whoever reads the folder should take one case per patient when ED == ES. Arrays are stored
(H, W, S) with affine diag(in-plane, in-plane, slice spacing): reading one back and preprocessing it at the
same target spacing and crop gives the mask stack back exactly. Names start with `synth_`, so they can never be
taken for real patients. Every file is written atomically and `Info.cfg` last, so a re-run skips the volumes
already complete and redoes only the one a crash interrupted.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from data.io import inside, write_csv, write_nifti, write_text
from data.types import SYNTHETIC_PREFIX
from synthesis.masks import MaskDraw

PREFIX = SYNTHETIC_PREFIX
MANIFEST = "manifest.csv"
INTENSITY_SCALE = 1000.0
FRAME = 1
MANIFEST_COLUMNS = ("case", "generator", "mask_source", "source_case", "seed", "mask_seed", "n_slices",
                    "slice_spacing_mm", "inplane_spacing_mm", "path", "mask_path")


def synthesize_dataset(generator, mask_draws: Sequence[MaskDraw], out_dir: Path | str, *,
                       slice_spacing_mm: float | None = None, inplane_spacing_mm: float | None = None,
                       seed: int = 0, generator_name: str | None = None,
                       intensity_scale: float = INTENSITY_SCALE) -> pd.DataFrame:
    """Write one synthetic volume per draw under `out_dir`; returns (and writes) the manifest.

    `generator` implements `synthesis.base.Generator.sample`. Spacings come from each draw (its source case's
    geometry) when it carries them; the arguments are the fallback for draws that do not. Volume i gets the
    style seed `volume_seed(seed, i)`, so the dataset is reproducible and volumes are independent of each other.
    """
    out_dir = Path(out_dir)
    name = safe_generator_name(generator_name or getattr(generator, "name", ""))
    width = max(4, len(str(len(mask_draws))))
    rows, written = [], 0
    bar = tqdm(mask_draws, desc=f"synthesize {name}", unit="volume", dynamic_ncols=True)
    for index, draw in enumerate(bar):
        case = f"{PREFIX}{name}_{index + 1:0{width}d}"
        slice_mm, inplane_mm = _spacing(draw, slice_spacing_mm, inplane_spacing_mm, case)
        style_seed = volume_seed(seed, index)
        info = _info_cfg(name, draw, style_seed)
        case_dir = out_dir / case
        image_path = case_dir / f"{case}_frame{FRAME:02d}.nii.gz"
        mask_path = case_dir / f"{case}_frame{FRAME:02d}_gt.nii.gz"
        if not _complete(case_dir, info, (image_path, mask_path)):
            images = _check_images(generator.sample(draw.mask, seed=style_seed, context=draw.image), draw.mask, name)
            affine = np.diag([inplane_mm, inplane_mm, slice_mm, 1.0])
            write_nifti(image_path, images.transpose(1, 2, 0) * np.float32(intensity_scale), affine)
            write_nifti(mask_path, draw.mask.transpose(1, 2, 0), affine, is_label=True)
            write_text(case_dir / "Info.cfg", info)  # last: its presence marks the volume complete
            written += 1
            bar.set_postfix(written=written, refresh=False)
        rows.append({"case": case, "generator": name, "mask_source": draw.source, "source_case": draw.source_case,
                     "seed": style_seed, "mask_seed": draw.seed, "n_slices": int(draw.mask.shape[0]),
                     "slice_spacing_mm": slice_mm, "inplane_spacing_mm": inplane_mm,
                     "path": image_path.relative_to(out_dir).as_posix(),
                     "mask_path": mask_path.relative_to(out_dir).as_posix()})
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(manifest, out_dir / MANIFEST)
    return manifest


def read_manifest(synth_dir: Path | str) -> pd.DataFrame:
    """The manifest of a synthetic dataset, checked against the files it lists; a case or path that would
    reach outside `synth_dir` is one DataError naming its line."""
    path = Path(synth_dir) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path}: no {MANIFEST}; expected a folder written by synthesize_dataset")
    manifest = pd.read_csv(path, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {list(MANIFEST_COLUMNS)}")
    for line, row in enumerate(manifest.itertuples(), start=2):  # every name before any file is touched
        inside(synth_dir, row.case, source=path, what=f"line {line}: case", flat=True)
        for column in ("path", "mask_path"):
            inside(synth_dir, getattr(row, column), source=path, what=f"line {line}: {column}")
    for column in ("path", "mask_path"):
        absent = [p for p in manifest[column] if not (Path(synth_dir) / p).is_file()]
        if absent:
            raise ValueError(f"{path}: {len(absent)} listed files are missing, e.g. {absent[0]}")
    return manifest


def volume_seed(seed: int, index: int) -> int:
    """Style seed of volume `index`: independent streams per volume from one dataset seed."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


def safe_generator_name(name: str) -> str:
    """Generator name as used in case names: letters and digits only, so `synth_<name>_<NNNN>` parses."""
    clean = re.sub(r"[^A-Za-z0-9]", "", str(name))
    if not clean:
        raise ValueError(f"generator_name: expected a name with letters or digits, got {name!r}")
    return clean


def _spacing(draw: MaskDraw, slice_mm: float | None, inplane_mm: float | None, case: str) -> tuple[float, float]:
    slice_mm = draw.slice_spacing_mm if draw.slice_spacing_mm is not None else slice_mm
    inplane_mm = draw.inplane_spacing_mm if draw.inplane_spacing_mm is not None else inplane_mm
    if slice_mm is None or inplane_mm is None:
        raise ValueError(f"{case}: slice_spacing_mm / inplane_spacing_mm: the draw from {draw.source_case} carries "
                         f"no spacing, so pass both")
    if not (0 < inplane_mm <= slice_mm):
        raise ValueError(f"{case}: expected 0 < inplane_spacing_mm <= slice_spacing_mm (the loader takes the "
                         f"largest spacing as the slice axis), got {inplane_mm} and {slice_mm}")
    return float(slice_mm), float(inplane_mm)


def _info_cfg(name: str, draw: MaskDraw, style_seed: int) -> str:
    return (f"ED: {FRAME}\nES: {FRAME}\nNbFrame: 1\n"
            f"Source: synthetic (generator={name}, mask_source={draw.source}, source_case={draw.source_case}, "
            f"seed={style_seed}, mask_seed={draw.seed})\n")


def _complete(case_dir: Path, info: str, files: tuple[Path, ...]) -> bool:
    """True when a previous run finished this volume with the same settings; a different one is an error."""
    info_path = case_dir / "Info.cfg"
    if not info_path.is_file():
        return False
    if info_path.read_text() != info:
        raise ValueError(f"{info_path}: this folder holds a different synthetic volume "
                         f"({info_path.read_text().strip().splitlines()[-1]}); write to a fresh out_dir")
    return all(f.is_file() for f in files)


def _check_images(images: np.ndarray, masks: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.shape != masks.shape:
        raise ValueError(f"generator {name}: sample returned shape {images.shape} for masks {masks.shape}")
    if not np.isfinite(images).all():
        raise ValueError(f"generator {name}: sample returned non-finite values")
    return np.clip(images, 0.0, 1.0)
