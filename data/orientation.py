"""Which voxel axis of a volume is the slice axis, and how the in-plane axes map onto image rows and columns.

One rule, used by validation (`data.validate.slice_axis`) and preprocessing (`data.preprocess`): the coarsest
spacing is the slice axis (ties: the last one), and the in-plane axes are ordered and flipped by the world
axes they are closest to (nibabel's `io_orientation`).
"""
from __future__ import annotations

import numpy as np
from nibabel.orientations import io_orientation

# Relative tolerance under which two voxel spacings count as equal when choosing the slice axis.
_SPACING_TIE_RTOL = 1e-3


def canonical_axes(affine: np.ndarray) -> tuple[int, tuple[int, int], tuple[bool, bool]]:
    """(slice axis, in-plane axes in H/W order, flips of H/W) for a voxel->world affine."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.all(np.isfinite(affine)) or np.any(spacing <= 0):
        raise ValueError(f"affine has a zero or non-finite voxel axis (spacing {spacing.tolist()})")
    ties = [a for a in range(3) if spacing[a] >= spacing.max() * (1 - _SPACING_TIE_RTOL)]
    slice_axis = ties[-1]
    inplane = [a for a in range(3) if a != slice_axis]
    # io_orientation on the 3-output, 2-input part: which world axis each in-plane axis is closest to.
    sub = np.eye(4)[:, :3]
    sub[:3, :2] = affine[:3, inplane]
    ornt = io_orientation(sub)
    if np.any(np.isnan(ornt)):  # degenerate in-plane directions: keep the file's order
        return slice_axis, (inplane[0], inplane[1]), (False, False)
    order = np.argsort(ornt[:, 0], kind="stable")
    axes = (inplane[order[0]], inplane[order[1]])
    flips = (bool(ornt[order[0], 1] < 0), bool(ornt[order[1], 1] < 0))
    return slice_axis, axes, flips
