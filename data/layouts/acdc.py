"""ACDC layout: `patientNNN/patientNNN_frameXX.nii.gz` + `_gt`, ED/ES frame numbers in `Info.cfg`.

    ACDC/                      <- root may be this folder (then `training/` is used) ...
      training/                <- ... or this one (or `testing/`, same layout, for a test set)
        patient001/
          Info.cfg             ED: 1 / ES: 12 / Group: DCM / Height: 184.0 / NbFrame: 30 / Weight: 95.0
          patient001_frame01.nii.gz   patient001_frame01_gt.nii.gz
          patient001_frame12.nii.gz   patient001_frame12_gt.nii.gz

Only `Info.cfg` is read here; images are opened later by `data.validate.load_case`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from data.layouts.common import warn_skipped
from data.types import SYNTHETIC_PREFIX, CaseRef, DataError

# real ACDC patients, and the synthetic volumes this project writes in the same layout
PATIENT_DIR = re.compile(rf"^(patient\d+|{SYNTHETIC_PREFIX}[A-Za-z0-9]+_\d+)$")
LOOKS_LIKE_PATIENT = re.compile(rf"^(patient|{SYNTHETIC_PREFIX})", re.IGNORECASE)  # "Patient004 copy": said, then skipped
SUBFOLDERS = ("training", "testing")  # dataset folder given: training/, or testing/ when it is the only one
SUFFIXES = (".nii.gz", ".nii")
PHASES = ("ED", "ES")

# Info.cfg key -> (metadata key, parser). Unknown keys (e.g. "Source: ...") are kept as-is, lower-cased.
_INFO_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "ED": ("ed_frame", int),
    "ES": ("es_frame", int),
    "Group": ("group", str),
    "Height": ("height", float),
    "Weight": ("weight", float),
    "NbFrame": ("nb_frames", int),
    "Source": ("source", str),
}


class AcdcLayout:
    name = "acdc"
    description = "acdc: patientNNN/Info.cfg with patientNNN_frameXX.nii.gz (+ _gt), in root or root/training"

    def matches(self, root: Path) -> bool:
        return self._case_folder(root) is not None

    def list_cases(self, root: Path, on_error: Callable[[str, DataError], None] | None = None) -> list[CaseRef]:
        """ED and ES of every patient, sorted by patient then phase; a bad patient raises, or is
        passed to `on_error(patient, error)` and skipped (so a validator can report all of them)."""
        folder = self._case_folder(root)
        if folder is None:
            raise DataError(root, f"not an ACDC folder; expected {self.description}")
        cases: list[CaseRef] = []
        folders = sorted(p for p in folder.iterdir() if p.is_dir())
        warn_skipped(folder, [p.name for p in folders if LOOKS_LIKE_PATIENT.match(p.name)
                              and not PATIENT_DIR.match(p.name)], "folders", "patientNNN")
        for patient_dir in (p for p in folders if PATIENT_DIR.match(p.name)):
            try:
                cases.extend(self._patient_cases(patient_dir))
            except DataError as exc:
                if on_error is None:
                    raise
                on_error(patient_dir.name, exc)
        return cases

    def _case_folder(self, root: Path) -> Path | None:
        if _has_patients(root):
            return root
        for sub in SUBFOLDERS:
            if _has_patients(root / sub):
                return root / sub
        return None

    def _patient_cases(self, patient_dir: Path) -> list[CaseRef]:
        info = read_info_cfg(patient_dir / "Info.cfg")
        patient = patient_dir.name
        cases = []
        # a single-phase volume (synthetic data: ED == ES) is one case, not the same file twice
        phases = PHASES[:1] if info["ed_frame"] == info["es_frame"] else PHASES
        for phase in phases:
            frame = info[f"{phase.lower()}_frame"]
            stem = f"{patient}_frame{frame:02d}"
            image = _find(patient_dir, stem)
            if image is None:
                raise DataError(patient_dir / f"{stem}.nii.gz",
                                f"{phase} frame file not found (Info.cfg says {phase}: {frame}; "
                                f"expected {stem}.nii.gz or {stem}.nii)")
            metadata = {"frame": frame, **{k: v for k, v in info.items() if k not in ("ed_frame", "es_frame")}}
            cases.append(CaseRef(patient_id=patient, phase=phase, image_path=image,
                                 mask_path=_find(patient_dir, f"{stem}_gt"), metadata=metadata))
        return cases


def read_info_cfg(path: Path) -> dict[str, Any]:
    """Parse an ACDC Info.cfg ("Key: value" lines). ED and ES are required; the rest is metadata."""
    if not path.is_file():
        raise DataError(path, "Info.cfg not found; expected one per patient with at least 'ED: <frame>' "
                              "and 'ES: <frame>' lines")
    info: dict[str, Any] = {"group": None, "height": None, "weight": None, "nb_frames": None, "source": None}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"unreadable Info.cfg ({exc})") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, sep, value = (part.strip() for part in line.partition(":"))
        if not sep or not key:
            raise DataError(path, f"line {number} {line!r}: expected 'Key: value'")
        meta_key, parse = _INFO_KEYS.get(key, (key.lower(), str))
        try:
            info[meta_key] = parse(value)
        except ValueError:
            raise DataError(path, f"line {number} {line!r}: expected {key} to be a {parse.__name__}") from None
    for phase in PHASES:
        frame = info.get(f"{phase.lower()}_frame")
        if frame is None:
            raise DataError(path, f"no '{phase}: <frame number>' line; expected ED and ES frame numbers")
        if frame < 0:
            raise DataError(path, f"{phase}: {frame}; expected a frame number >= 0")
    return info


def _has_patients(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() and PATIENT_DIR.match(p.name) for p in folder.iterdir())


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None
