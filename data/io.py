"""Reading and writing volumes. NIfTI through nibabel; other formats (.mha, .mhd, .nrrd) through SimpleITK.

Writes are atomic (temp file + rename) so a killed run never leaves a truncated file behind, honour the umask
(0644 under the usual 022, as any other program's outputs; `mkstemp` alone would give 0600), and a full disk or
a permission problem is one `WriteError` naming the file instead of a traceback.
"""
from __future__ import annotations

import collections
import csv
import errno
import functools
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np
import pandas as pd

from data.types import DataError, Volume, WriteError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".mha", ".mhd", ".nrrd")


def has_suffix(path: Path | str, suffixes: tuple[str, ...]) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in suffixes)


def inside(root: Path | str, relative: str, *, source: Path | str, what: str, flat: bool = False) -> Path:
    """`root / relative` for a name read from a file the user did not type (a manifest row, dataset.json,
    Info.cfg), refused with one DataError naming `source` and `what` unless it stays inside `root`.

    The check is on the name itself (absolute, `..` climbing out; `flat`: any folder part at all), not on
    symlinks: a link the user placed inside a dataset is theirs to place. This keeps a crafted file from
    reading or writing anywhere else (a case `../../x` or `/etc/x`)."""
    text = str(relative)
    parts = Path(text).parts
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            break
    escapes = (not text.strip() or "\x00" in text or Path(text).is_absolute() or depth < 0
               or (flat and (len(parts) != 1 or parts[0] in (".", ".."))))
    if escapes:
        where = "a plain file name" if flat else "a path inside that folder"
        raise DataError(source, f"{what} {text!r} points outside {root}; expected {where}")
    return Path(root) / text


def read_volume(path: Path | str, dtype=None) -> Volume:
    """Read a volume keeping its affine; any read failure becomes one DataError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        if has_suffix(path, NIFTI_SUFFIXES):
            img = nib.load(str(path))
            array = np.asanyarray(img.dataobj)
            affine = _affine_with_header_spacing(np.asarray(img.affine, dtype=np.float64),
                                                 img.header.get_zooms()[:3])
        elif has_suffix(path, SITK_SUFFIXES):
            array, affine = _read_sitk(path)
        else:
            raise DataError(path, f"unsupported file type; expected one of {NIFTI_SUFFIXES + SITK_SUFFIXES}")
    except DataError:
        raise
    except Exception as exc:  # nibabel/zlib/SimpleITK raise many types for truncated or corrupt files
        raise DataError(path, f"unreadable or truncated image file ({type(exc).__name__}: {exc})") from exc
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return Volume(array=np.asarray(array), affine=affine, path=path)


def _affine_with_header_spacing(affine: np.ndarray, zooms) -> np.ndarray:
    """Voxel sizes from the NIfTI header's pixdim, as ITK/SimpleITK and MONAI do.

    Some datasets (all of ACDC) store an sform with unit-length columns and the true voxel size only in
    pixdim, so nibabel's affine says 1 mm. Directions are kept, column lengths set to pixdim.
    """
    zooms = np.asarray(zooms, dtype=np.float64)
    norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if zooms.size < 3 or np.any(zooms <= 0) or np.any(norms == 0) or np.allclose(norms, zooms, rtol=1e-4):
        return affine
    fixed = affine.copy()
    fixed[:3, :3] = affine[:3, :3] / norms * zooms
    return fixed


def _read_sitk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK reads in LPS with (z, y, x) arrays; convert to nibabel's RAS affine and (x, y, z) order."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(img)
    array = np.transpose(array, tuple(reversed(range(array.ndim))))
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(img.GetDimension(), img.GetDimension())
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)
    origin = np.asarray(img.GetOrigin(), dtype=np.float64)
    dim = min(3, img.GetDimension())
    affine = np.eye(4)
    affine[:dim, :dim] = direction[:dim, :dim] * spacing[:dim]
    affine[:dim, 3] = origin[:dim]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS
    return array, affine


# errno of a failed write -> what the user is told; any other OSError is left as it is (a bug, not the disk)
WRITE_CAUSES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EROFS: "read-only file system"}


def write_error(exc: OSError, path: Path | str | None) -> WriteError | None:
    """The WriteError for a failed write of `path`, or None when `exc` is not about the disk or permissions."""
    cause = WRITE_CAUSES.get(exc.errno)
    return WriteError(path, cause) if cause is not None else None


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Around code that writes `path`: a full disk or a permission problem becomes one WriteError naming
    `path` (a failed write() names no file; torch and nibabel would not say which)."""
    try:
        yield
    except OSError as exc:
        error = write_error(exc, path)
        if error is None:
            raise
        raise error from exc


@functools.cache
def umask() -> int:
    """The process umask, read once: from /proc where it is shown (asking os.umask means setting it, for every
    thread at once), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds. The file gets the
    mode a plain open() would give (0o666 less the umask); a failed write is a WriteError naming `path`."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(path.suffixes) or ".tmp"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            os.chmod(tmp_path, 0o666 & ~umask())
            yield tmp_path
            os.replace(tmp_path, path)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()


def write_nifti(path: Path | str, array: np.ndarray, affine: np.ndarray, *, is_label: bool = False) -> Path:
    """Write a NIfTI atomically; labels as uint8 so they open as segmentations in ITK-SNAP/3D Slicer."""
    array = np.asarray(array)
    array = array.astype(np.uint8) if is_label else array.astype(np.float32)
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    if is_label:
        img.header.set_intent("label")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


def read_table(path: Path | str) -> pd.DataFrame:
    """A CSV of the run (empty frame if absent or empty); `generator` stays text ('' for the real arm)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=["", "nan", "NaN"])
    except pd.errors.EmptyDataError:  # e.g. statistics.csv of a real-only sweep: nothing to compare
        return pd.DataFrame()
    if "generator" in frame:
        frame["generator"] = frame["generator"].fillna("").astype(str)
    return frame


def write_csv(frame, path: Path | str) -> Path:
    """A pandas DataFrame as CSV, atomically: readers never see a half-written table."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def keep_csv_rows(path: Path | str, keep, fieldnames: list[str] | None = None) -> tuple[list[str], list[dict]]:
    """Rewrite a CSV atomically with only the rows for which `keep(row)` is true (a resumed run's log is
    cut back to its checkpoint); returns (fieldnames, kept rows). A missing file gives no rows."""
    path = Path(path)
    rows: list[dict] = []
    if path.is_file():
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fieldnames = fieldnames or list(reader.fieldnames or [])
            rows = [row for row in reader if keep(row)]
    fieldnames = list(fieldnames or [])
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    return fieldnames, rows


class StepLog:
    """A training loop's metrics.csv: one row per step, appended and flushed as training goes so that it survives a
    kill, and cut back on resume so that the file matches an uninterrupted run (the one log of both trainers).

    The values of a step may arrive in parts (a segmenter's validation Dice after its loss): a row is written when
    the next step starts, at `flush` or at `close`. Rows from `first_step` on are dropped when the log opens.
    `columns` fixes the header (else the kept file's, or the first row's keys); the last `keep` rows are held for
    `tail_means`; with `tensorboard`, the scalars also go to `<folder>/tensorboard` when the package is installed.
    Disabled (processes other than rank 0), it reads and writes nothing.
    """

    def __init__(self, path: Path | str, first_step: int, *, columns: list[str] | None = None,
                 enabled: bool = True, keep: int = 50, tensorboard: bool = False):
        self.path, self.enabled = Path(path), enabled
        self.columns = list(columns) if columns else None
        self.pending: dict[str, Any] | None = None
        self.rows: collections.deque[dict[str, float]] = collections.deque(maxlen=keep)
        self._fh = self._writer = self._board = None
        if not enabled:
            return
        if self.path.is_file():
            fields, kept = keep_csv_rows(self.path, lambda row: int(row["step"]) < first_step, self.columns)
            self.columns = self.columns or fields or None
            self.rows.extend({k: float(v) for k, v in row.items() if v not in ("", None)} for row in kept)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional
                pass
            else:
                self._board = SummaryWriter(str(self.path.parent / "tensorboard"), purge_step=first_step)

    def add(self, step: int, **values: float) -> None:
        if not self.enabled:
            return
        if self.pending is not None and self.pending["step"] != step:
            self._write()
        if self.pending is None:
            self.pending = {"step": step}
        self.pending.update(values)

    def flush(self) -> None:
        if not self.enabled:
            return
        if self.pending is not None:
            self._write()
        if self._fh is not None:
            self._fh.flush()

    def _write(self) -> None:
        row, self.pending = self.pending, None
        with writing(self.path):
            if self._writer is None:
                self.columns = self.columns or list(row)
                new = not self.path.is_file() or self.path.stat().st_size == 0
                self._fh = self.path.open("a", newline="")
                self._writer = csv.DictWriter(self._fh, self.columns, extrasaction="ignore", restval="")
                if new:
                    self._writer.writeheader()
            text = {k: v if k == "step" else f"{v:.6g}" for k, v in row.items()}
            self._writer.writerow(text)
        self.rows.append({k: float(v) for k, v in text.items()})  # as written, as a resumed log reads them
        if self._board is not None:
            for key, value in row.items():
                if key != "step":
                    self._board.add_scalar(key, float(value), row["step"])

    def tail_means(self) -> dict[str, float]:
        """The mean of each logged value over the kept rows (step and seconds aside), e.g. a run's final losses."""
        keys = [k for k in (self.columns or []) if k not in ("step", "seconds")]
        return {k: round(float(np.mean([r[k] for r in self.rows if k in r])), 5) for k in keys
                if any(k in r for r in self.rows)}

    def close(self) -> None:
        if not self.enabled:
            return
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = self._writer = None
        if self._board is not None:
            self._board.close()
            self._board = None


def write_text(path: Path | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def save_torch(path: Path | str, payload: dict) -> Path:
    """torch.save to a temp file, fsync, then rename: a kill never leaves a truncated checkpoint.

    It writes through a Python file: on a full disk that raises ENOSPC, where torch's own writer raises
    "RuntimeError: ... unexpected pos", which says nothing about the disk."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())  # make the bytes durable before the rename makes them visible
    return Path(path)


def load_torch(path: Path | str, what: str, map_location="cpu", *, keys: tuple[str, ...] = ()) -> dict:
    """torch.load (weights only, no code execution) of a cmr-synth `what`: a dict holding `keys`. A missing file
    is a DataError naming it; any other file (truncated, not torch, another cmr-synth file) is one DataError
    "not a cmr-synth WHAT: PATH (it is ...)" saying what it is instead."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, pickled code, ...
        raise _not_a(path, what, _unloadable(path, exc)) from exc
    if not isinstance(payload, dict) or any(k not in payload for k in keys):
        raise _not_a(path, what, describe_torch_payload(payload))
    return payload


def describe_torch_payload(payload: Any) -> str:
    """What a loaded torch file is, by the keys cmr-synth's own files carry, for an error message."""
    if not isinstance(payload, dict):
        return f"a torch file holding a {type(payload).__name__}"
    if "generator" in payload and "format" in payload:
        return f"a {payload['generator']!r} generator file, for `cmr-synth synthesize --generator`"
    if "generator" in payload and "fingerprint" in payload:
        return f"a {payload['generator']!r} generator's training checkpoint"
    if "arm" in payload and "model" in payload:
        return "a segmentation checkpoint"
    shown = sorted(map(str, payload))
    return f"a torch file with keys {shown[:6]}{' ...' if len(shown) > 6 else ''}, not one cmr-synth wrote"


def _unloadable(path: Path, exc: Exception) -> str:
    """Why torch.load refused `path`, judged from its first bytes (torch's own messages say little)."""
    import pickle

    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        return "an empty file"
    if head.startswith(b"\x1f\x8b"):
        return "gzip data such as a .nii.gz image, not a torch file"
    if head == b"PK\x03\x04" and isinstance(exc, pickle.UnpicklingError):
        return "a torch file holding Python objects (e.g. a whole pickled model), which are not loaded"
    if head == b"PK\x03\x04":
        first = (str(exc).splitlines() or [""])[0].split(". ")[0][:120]  # torch goes on with advice
        return f"a truncated or corrupt torch file ({type(exc).__name__}: {first})"
    return "not a torch file"


def _not_a(path: Path, what: str, kind: str) -> DataError:
    error = DataError(None, f"not a cmr-synth {what}: {path} (it is {kind})")
    error.path = path
    return error
