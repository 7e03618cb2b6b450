"""Writing phantom patients to disk in the ACDC layout (patientNNN/..._frameNN[_gt].nii.gz, Info.cfg)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.io import write_nifti, write_text
from data.parallel import process_map
from data.phantom.acquisition import scanner_style
from data.phantom.anatomy import GROUPS
from data.phantom.patient import PhantomPatient, generate_patient

# Bump whenever the generator's output changes for a given seed; caches keyed on the phantom should
# include it (pipeline.run keys the phantom stage on patients and seed only).
PHANTOM_VERSION = 1
PATIENT_DIR = "patient{:03d}"  # ACDC folder name of patient i (1-based)


def _info_cfg(patient: PhantomPatient, seed: int) -> str:
    """ACDC's Info.cfg (one `Key: value` a line, one decimal for height and weight) plus our provenance."""
    i = patient.info
    return (f"ED: {i['ED']}\nES: {i['ES']}\nGroup: {i['Group']}\nHeight: {i['Height']:.1f}\n"
            f"NbFrame: {i['NbFrame']}\nWeight: {i['Weight']:.1f}\n"
            f"Source: cmr-synth phantom (style={patient.style}, seed={seed})\n")


def write_phantom(out_dir: Path | str, n_patients: int, seed: int, style: str | None = None, *,
                  workers: int = 1) -> list[Path]:
    """Write `n_patients` phantom patients in the ACDC layout under `out_dir`; return their folders.

    Groups cycle NOR, DCM, HCM, MINF, RV (balanced, like ACDC); patient i depends only on (seed, i), so `workers`
    processes write the same files as one.
    """
    if n_patients < 1:
        raise ValueError(f"n_patients: expected at least 1, got {n_patients}")
    if style is not None:
        scanner_style(style)  # fail before anything is written
    write = functools.partial(write_patient, out_dir, seed=seed, style=style)
    with tqdm(total=n_patients, desc="phantom", unit="patient", leave=False) as bar:
        return process_map(write, range(n_patients), workers, done=lambda _: bar.update())


def write_patient(out_dir: Path | str, i: int, seed: int, style: str | None = None) -> Path:
    """Write phantom patient `i` (0-based) of `write_phantom(out_dir, n, seed, style)` for any n > i; return its
    folder. Info.cfg is written last, so a folder holding it is complete (patients can be written in parallel)."""
    pid = PATIENT_DIR.format(i + 1)
    child = np.random.SeedSequence(seed, spawn_key=(i,))  # = SeedSequence(seed).spawn(n)[i]
    patient = generate_patient(np.random.default_rng(child), style, group=GROUPS[i % len(GROUPS)])
    pdir = Path(out_dir) / pid
    for phase, frame in patient.frames.items():
        stem = pdir / f"{pid}_frame{frame:02d}"
        write_nifti(f"{stem}.nii.gz", patient.images[phase], patient.affine)
        write_nifti(f"{stem}_gt.nii.gz", patient.masks[phase], patient.affine, is_label=True)
    write_text(pdir / "Info.cfg", _info_cfg(patient, seed))
    return pdir
