"""The objects the data stage hands to the other stages.

Everything downstream (synthesis, segmentation, pipeline) depends only on these types, never on a
dataset's folder layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Internal label convention of the whole project.
LABELS: dict[int, str] = {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
STRUCTURES: tuple[str, ...] = ("RV", "MYO", "LV")
NUM_CLASSES = len(LABELS)
# Case names of synthetic volumes start with this (`synth_<generator>_0001`), so they can never be taken for a
# real patient: the synthesis stage writes them, the ACDC layout reads them.
SYNTHETIC_PREFIX = "synth_"


class DataError(ValueError):
    """Bad input data. The message names the file and what was expected."""

    def __init__(self, path: Path | str | None, message: str):
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)

    def __reduce__(self):  # pickles as it reads (it crosses processes from `prepare_cases`' workers)
        return _restore_error, (type(self), self.path, str(self))


def _restore_error(cls: type, path: Path | None, text: str) -> DataError:
    error = cls.__new__(cls)
    ValueError.__init__(error, text)
    error.path = path
    return error


class DataWarning(UserWarning):
    """Suspicious but legitimate data (e.g. slices without labels); filter with this category."""


class ForeignCheckpointError(ValueError):
    """A training checkpoint in an output folder that another run wrote (other settings, arm or seed), so a
    trainer cannot resume from it. `pipeline.cache.run_unit` then clears the unit folder and starts it over."""


class WriteError(Exception):
    """An output that cannot be written: a full disk, no permission, a read-only file system. Names the path
    and the cause; writes are atomic, so everything written before stays intact and a re-run resumes."""

    def __init__(self, path: Path | str | None, cause: str):
        super().__init__(path, cause)  # both args: the error pickles (it crosses processes under torchrun)
        self.path, self.cause = (Path(path) if path is not None else None), cause

    def __str__(self) -> str:
        return f"cannot write {self.path if self.path is not None else '(path unknown)'}: {self.cause}"


@dataclass(frozen=True)
class CaseRef:
    """One phase (e.g. ED or ES) of one patient, as found on disk; nothing is read yet."""

    patient_id: str
    phase: str
    image_path: Path
    mask_path: Path | None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def case_id(self) -> str:
        return f"{self.patient_id}_{self.phase}"


@dataclass
class Volume:
    """A 3D array in its file's voxel order with the affine that places it in scanner space (mm)."""

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


@dataclass
class PreparedCase:
    """A case ready for 2D work: slice axis first, resampled in-plane, cropped/padded, normalised.

    `geometry` (a `data.preprocess.Geometry`) holds what is needed to map a prediction made on these
    slices back onto the original voxel grid exactly; evaluation happens there, never here.
    """

    ref: CaseRef
    # From `data.cache.prepare_cases` both are read-only `np.memmap`s: index slices, copy what you change.
    image: np.ndarray  # (S, H, W) float32, robustly normalised to [0, 1]
    mask: np.ndarray | None  # (S, H, W) uint8 in the internal label convention
    geometry: Any

    @property
    def case_id(self) -> str:
        return self.ref.case_id

    @property
    def patient_id(self) -> str:
        return self.ref.patient_id
