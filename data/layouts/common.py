"""What the layout adapters share."""
from __future__ import annotations

import warnings
from pathlib import Path

from data.types import DataWarning


def warn_skipped(folder: Path, names: list[str], kind: str, expected: str) -> None:
    """One DataWarning listing entries of `folder` that look like cases but do not fit the layout's naming
    (`Patient004 copy`, `case_0000.nii` beside `.nii.gz` files): they are skipped, and a user should know."""
    if names:
        shown = ", ".join(repr(n) for n in names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        warnings.warn(f"{folder}: skipped {len(names)} {kind} that look like cases but are not named "
                      f"{expected}: {shown}", DataWarning, stacklevel=3)
