"""Read one case with every check a bad file can fail, and validate a whole dataset folder.

Each problem is one `DataError` naming the file and what was expected, raised before any array
reaches preprocessing, so a bad dataset fails in seconds with a message rather than as a shape error
deep inside training. Problems that are normal in cardiac MR (slices beyond the heart without
labels) are warnings (`DataWarning`), not errors.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data.io import read_volume, write_csv
from data.labels import remap_labels, validate_label_map
from data.layouts import list_cases
from data.orientation import canonical_axes
from data.types import LABELS, STRUCTURES, CaseRef, DataError, DataWarning, Volume

ROLES = ("train", "val", "test")
# Image and mask must share a grid: equal affines up to these tolerances (relative, and mm).
AFFINE_RTOL = 1e-3
AFFINE_ATOL = 1e-2


def load_case(ref: CaseRef, label_map: dict[int, int] | None = None, *, require_mask: bool = True,
              role: str = "train") -> tuple[Volume, Volume | None]:
    """Read and check one case: image as float32, mask as uint8 in the internal labels (0..3).

    The mask takes the image's affine (they agree within tolerance, checked here), so downstream code
    sees one geometry per case. A mask that is empty everywhere is an error for training cases (it
    would teach "no heart") and a warning otherwise.
    """
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {ROLES}")
    label_map = validate_label_map(label_map)
    image = _read_3d(ref.image_path, dtype=np.float32)
    bad = ~np.isfinite(image.array)
    if bad.any():
        raise DataError(ref.image_path, f"{int(bad.sum())} NaN/Inf intensities ({int(np.isnan(image.array).sum())} "
                                        f"NaN); expected finite values everywhere")
    if ref.mask_path is None:
        if require_mask:
            raise DataError(ref.image_path, f"no mask file found for case {ref.case_id}; expected one beside the "
                                            f"image (ACDC: <image>_gt.nii.gz, nnU-Net: labelsTr/<case>.nii.gz)")
        _check_contrast(image, None, role)
        return image, None

    raw = _read_3d(ref.mask_path)
    if raw.shape != image.shape:
        raise DataError(ref.mask_path, f"mask shape {raw.shape} differs from image shape {image.shape} "
                                       f"({ref.image_path.name}); expected the same voxel grid")
    if not np.allclose(raw.affine, image.affine, rtol=AFFINE_RTOL, atol=AFFINE_ATOL):
        raise DataError(ref.mask_path, f"mask affine differs from the image's ({ref.image_path.name}); expected "
                                       f"the same voxel grid (tolerance {AFFINE_ATOL} mm)\nmask:\n{raw.affine}"
                                       f"\nimage:\n{image.affine}")
    mask = Volume(remap_labels(raw.array, label_map, ref.mask_path), image.affine.copy(), ref.mask_path)
    _check_foreground(mask, role)
    _check_contrast(image, mask, role)
    return image, mask


def _read_3d(path: Path, dtype=None) -> Volume:
    """read_volume + spacing from the header + a 3D check (trailing singleton dimensions are dropped)."""
    volume = read_volume(path, dtype=dtype)
    array = volume.array
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        hint = (" (a cine series; use one frame per file, e.g. ACDC's patientNNN_frameXX.nii.gz, not _4d)"
                if array.ndim == 4 else "")
        raise DataError(path, f"{array.ndim}D array of shape {volume.shape}{hint}; expected a 3D volume")
    return Volume(np.ascontiguousarray(array), volume.affine, path)


def slice_axis(volume: Volume) -> int:
    """The through-plane axis, by the one rule preprocessing uses (the coarsest spacing, ties -> last)."""
    return canonical_axes(volume.affine)[0]


def _check_foreground(mask: Volume, role: str) -> None:
    axis = slice_axis(mask)
    per_slice = np.moveaxis(mask.array, axis, 0).reshape(mask.shape[axis], -1).any(axis=1)
    if not per_slice.any():
        message = "mask has no foreground (labels 1-3) at all"
        if role == "train":
            raise DataError(mask.path, f"{message}; expected a segmented heart in a training case")
        warnings.warn(f"{mask.path}: {message} ({role} case)", DataWarning, stacklevel=3)
    elif not per_slice.all():
        warnings.warn(f"{mask.path}: {int((~per_slice).sum())} of {per_slice.size} slices without labels "
                      f"(normal beyond base and apex)", DataWarning, stacklevel=3)


def _check_contrast(image: Volume, mask: Volume | None, role: str) -> None:
    """A constant image (all zeros: a failed export or conversion) would train silently on nothing. A training
    case whose image is constant inside its mask is an error; any other constant image a warning."""
    if mask is not None and role == "train":
        heart = image.array[mask.array > 0]
        if heart.size and heart.min() == heart.max():
            raise DataError(image.path, f"no contrast inside the mask (every labelled voxel is {heart.flat[0]:g}); "
                                        f"expected an MR image of the heart in a training case")
    if image.array.min() == image.array.max():
        warnings.warn(f"{image.path}: image is constant ({image.array.flat[0]:g} everywhere); expected an MR "
                      f"image with contrast", DataWarning, stacklevel=3)


@dataclass
class ValidationReport:
    """Per-case summary of a dataset folder; `frame` has one row per case (or per unlistable patient)."""

    frame: pd.DataFrame
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # entries that look like cases but do not fit the layout

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary_line(self) -> str:
        return f"{len(self.frame)} cases, {len(self.errors)} errors, {len(self.warnings)} warnings"

    def display_frame(self, max_message: int | None = None) -> pd.DataFrame:
        """Tuples as 'AxBxC' strings and volumes rounded, for the table and the CSV."""
        out = self.frame.copy()
        out["shape"] = out["shape"].map(lambda s: "x".join(map(str, s)) if s else "")
        out["spacing"] = out["spacing"].map(lambda s: "x".join(f"{v:g}" for v in s) if s else "")
        out["labels"] = out["labels"].map(lambda s: ",".join(map(str, s)) if s is not None else "")
        for name in STRUCTURES:
            out[f"{name}_ml"] = out[f"{name}_ml"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
        if max_message is not None:
            out["message"] = out["message"].map(lambda m: m if len(m) <= max_message else m[: max_message - 3] + "...")
        return out

    def format_table(self, max_message: int = 60) -> str:
        """Fixed-width table, then every error in full, then 'N cases, M errors, K warnings'."""
        parts = []
        if len(self.frame):
            table = self.display_frame(max_message)
            width = max(len("message"), *table["message"].map(len))
            table["message"] = table["message"].map(lambda m: m.ljust(width))  # text reads left to right
            parts.append(table.to_string(index=False))
        else:
            parts.append("(no cases)")
        if self.skipped:
            parts.append("warnings:\n" + "\n".join(f"  {w}" for w in self.skipped))
        if self.errors:
            parts.append("errors:\n" + "\n".join(f"  {e}" for e in self.errors))
        parts.append(self.summary_line())
        return "\n".join(parts)

    def to_csv(self, path: Path | str) -> Path:
        return write_csv(self.display_frame(), path)


COLUMNS = ["case", "patient", "phase", "shape", "spacing", "labels", *(f"{s}_ml" for s in STRUCTURES),
           "status", "message"]


def validate_dataset(root: Path | str, layout: str = "auto", label_map: dict[int, int] | None = None, *,
                     role: str = "train", require_mask: bool = True) -> ValidationReport:
    """Load every case of `root`, collecting errors instead of stopping at the first.

    Only a folder that matches no layout raises; everything per patient or per case becomes a row
    with status "error" and its message. Warnings are counted and kept in the row's message.
    """
    label_map = validate_label_map(label_map)
    rows: list[dict] = []
    errors: list[str] = []
    all_warnings: list[str] = []

    def listing_error(entry: str, exc: DataError) -> None:
        errors.append(str(exc))
        rows.append(_row(entry, "", "", status="error", message=str(exc)))

    with warnings.catch_warnings(record=True) as caught:  # entries the layout skipped, listed in the report
        warnings.simplefilter("always")
        cases = list_cases(root, layout, on_error=listing_error)
    skipped = [str(w.message) for w in caught]
    all_warnings.extend(skipped)
    if not cases and not errors:
        errors.append(f"{root}: no cases found")
    for ref in tqdm(cases, desc=f"validating {Path(root).name}", unit="case", disable=None):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                image, mask = load_case(ref, label_map, require_mask=require_mask, role=role)
            except DataError as exc:
                errors.append(str(exc))
                rows.append(_row(ref.case_id, ref.patient_id, ref.phase, status="error", message=str(exc)))
                continue
        prefixes = (f"{ref.mask_path}: ", f"{ref.image_path}: ")  # the row already names the case
        notes = [_strip_prefixes(str(w.message), prefixes) for w in caught]
        all_warnings.extend(notes)
        rows.append(_case_row(ref, image, mask, "; ".join(notes)))
    return ValidationReport(pd.DataFrame(rows, columns=COLUMNS), errors, all_warnings, skipped)


def _strip_prefixes(text: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        text = text.removeprefix(prefix)
    return text


def _row(case: str, patient: str, phase: str, **values) -> dict:
    row = {column: None for column in COLUMNS}
    row.update(case=case, patient=patient, phase=phase, shape=(), spacing=(), message="")
    row.update(values)
    return row


def _case_row(ref: CaseRef, image: Volume, mask: Volume | None, message: str) -> dict:
    row = _row(ref.case_id, ref.patient_id, ref.phase, status="ok", message=message,
               shape=image.shape, spacing=tuple(round(s, 2) for s in image.spacing))
    if mask is not None:
        counts = np.bincount(mask.array.ravel(), minlength=len(LABELS))
        voxel_ml = float(np.prod(image.spacing)) / 1000.0
        row["labels"] = tuple(int(v) for v in np.flatnonzero(counts))
        for label, name in LABELS.items():
            if name in STRUCTURES:
                row[f"{name}_ml"] = float(counts[label]) * voxel_ml
    return row


__all__ = ["DataWarning", "ValidationReport", "load_case", "slice_axis", "validate_dataset"]
