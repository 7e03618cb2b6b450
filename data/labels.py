"""Label conventions: map a dataset's label values onto the project's (0 bg, 1 RV, 2 MYO, 3 LV).

Datasets disagree on label order (ACDC: 1 RV, 2 MYO, 3 LV; M&Ms: 1 LV, 2 MYO, 3 RV), so every mask
goes through `remap_labels` once, when it is read, and nothing downstream ever sees file labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.types import LABELS, DataError

# Largest file label value accepted; masks are stored as small integers in every known dataset.
_MAX_FILE_LABEL = 255


def validate_label_map(label_map: dict[int, int] | None) -> dict[int, int] | None:
    """Check a file-label -> internal-label map and return it with plain int keys and values.

    Keys are file label values (0..255), values internal labels (0..3). Raises DataError (a ValueError)
    naming the offending key, so a typo in a YAML config or `--label-map` is one clear line before any
    file is read.
    """
    if label_map is None:
        return None
    if not isinstance(label_map, dict):
        raise DataError(None, f"label_map: expected a dict file label -> internal label, "
                              f"got {type(label_map).__name__}")
    checked: dict[int, int] = {}
    for key, value in label_map.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= int(key) <= _MAX_FILE_LABEL:
            raise DataError(None, f"label_map key {key!r}: expected a file label value, "
                                  f"an integer in 0..{_MAX_FILE_LABEL}")
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) not in LABELS:
            raise DataError(None, f"label_map[{key!r}] = {value!r}: expected an internal label, one of "
                             + ", ".join(f"{k} ({v})" for k, v in LABELS.items()))
        checked[int(key)] = int(value)
    return checked


def remap_labels(mask: np.ndarray, label_map: dict[int, int] | None, path: Path | str | None = None) -> np.ndarray:
    """Return `mask` as uint8 in the internal convention.

    With `label_map=None` the file must already use 0..3. Otherwise every value in the mask must be a
    key of the map, except 0, which stays background when unmapped. Anything else (including
    non-integer values) is a DataError naming the file, the unexpected values and the allowed ones:
    a silently dropped label would corrupt every downstream metric.
    """
    label_map = validate_label_map(label_map)
    if label_map is None:
        table = {k: k for k in LABELS}
    else:
        table = {0: 0, **label_map}
    mask = np.asarray(mask)
    values = np.unique(mask)
    unexpected = [v for v in values.tolist() if v not in table]  # 1.5 is not in {1: ...}; 1.0 is
    if unexpected:
        shown = ", ".join(_fmt(v) for v in unexpected[:10]) + (", ..." if len(unexpected) > 10 else "")
        source = "label_map " + str(label_map) if label_map is not None else "internal labels (no label_map)"
        raise DataError(path, f"mask contains label value(s) {shown}; allowed: "
                              f"{sorted(table)} from {source}")
    lut = np.zeros(max(table) + 1, dtype=np.uint8)
    for file_label, internal in table.items():
        lut[file_label] = internal
    return lut[mask.astype(np.intp, copy=False)]


def _fmt(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
