"""Preprocessing for 2D work on short-axis stacks, with an exact inverse onto the original voxel grid.

Steps (all recorded in a `Geometry`, so predictions can be mapped back; evaluation happens there):

1. Orientation: the slice axis is the voxel axis with the largest spacing (ties: the last axis), moved first.
   The two in-plane axes are ordered and flipped by the affine (`nibabel.orientations.io_orientation` on the
   in-plane columns) so that rows then columns point along increasing RAS world axes. Only a transpose and
   flips, so the step is exactly invertible. `as_closest_canonical` is not used: on an oblique short-axis
   stack it can make the slice axis an in-plane one.
2. Intensities: clipped to `clip_percentiles` of the whole volume and scaled to [0, 1] (float32).
3. In-plane resampling to `target_spacing` mm, never across slices. The grids share their centre and the
   output grid has exactly the target spacing; sampling coordinates are explicit (an affine map), so the
   output shapes are exact both ways. Image: linear. Mask: linear interpolation of each label's one-hot map,
   then argmax (keeps a thin myocardium that nearest-neighbour would break).
4. Crop/pad to `crop_size` x `crop_size` around the IMAGE centre (never the mask: there is none at test
   time). Padding: 0 for images (= the minimum after normalisation) and masks.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from data.config import PreprocessConfig
from data.orientation import canonical_axes
from data.types import CaseRef, DataError, PreparedCase, Volume
from data.validate import load_case

# Bump when the preprocessing output changes for the same inputs and config: it invalidates caches.
PREPROCESS_VERSION = 1


@dataclass(frozen=True)
class Geometry:
    """Everything needed to map (S, H, W) prepared slices back onto the original voxel grid exactly.

    Prepared array = crop(resample(flip(transpose(original, (slice_axis, *inplane_axes)), flips))).
    """

    original_shape: tuple[int, int, int]
    original_affine: tuple[tuple[float, ...], ...]  # 4 x 4, voxel index -> scanner mm
    original_spacing: tuple[float, float, float]  # per voxel axis of the original array
    slice_axis: int  # original voxel axis that became axis 0 (S)
    inplane_axes: tuple[int, int]  # original voxel axes that became H and W
    flips: tuple[bool, bool]  # whether H / W were reversed after the transpose
    resampled_shape: tuple[int, int]  # in-plane shape at target_spacing, before crop/pad
    crop_start: tuple[int, int]  # index in the resampled grid of the crop's first row/col (<0: padding)
    crop_size: int
    target_spacing: float

    @property
    def affine(self) -> np.ndarray:
        return np.asarray(self.original_affine, dtype=np.float64)

    @property
    def axes(self) -> tuple[int, int, int]:
        return (self.slice_axis, *self.inplane_axes)

    @property
    def oriented_shape(self) -> tuple[int, int, int]:
        """Original shape in (S, H, W) order, before resampling."""
        return tuple(self.original_shape[a] for a in self.axes)  # type: ignore[return-value]

    @property
    def inplane_spacing(self) -> tuple[float, float]:
        return (self.original_spacing[self.inplane_axes[0]], self.original_spacing[self.inplane_axes[1]])

    @property
    def crop_window(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(start, shape) of the part of the resampled grid that the crop covers."""
        lo = tuple(max(0, s) for s in self.crop_start)
        hi = tuple(min(m, s + self.crop_size) for m, s in zip(self.resampled_shape, self.crop_start))
        return lo, tuple(h - low for h, low in zip(hi, lo))  # type: ignore[return-value]

    @property
    def prepared_shape(self) -> tuple[int, int, int]:
        return (self.original_shape[self.slice_axis], self.crop_size, self.crop_size)

    def prepared_affine(self) -> np.ndarray:
        """Affine from prepared (s, h, w) indices to scanner mm, e.g. to view prepared slices as NIfTI."""
        n_s, n_h, n_w = self.oriented_shape
        # prepared index -> oriented (flipped, un-resampled) index: an axis-aligned scaling + shift.
        to_oriented = np.eye(4)
        for dim, (n_in, spacing) in enumerate(zip((n_h, n_w), self.inplane_spacing), start=1):
            scale = self.target_spacing / spacing
            c_in, c_out = (n_in - 1) / 2.0, (self.resampled_shape[dim - 1] - 1) / 2.0
            to_oriented[dim, dim] = scale
            to_oriented[dim, 3] = c_in + (self.crop_start[dim - 1] - c_out) * scale
        # oriented index -> original voxel index: undo flips, then the transpose.
        to_original = np.zeros((4, 4))
        to_original[3, 3] = 1.0
        for dim, axis in enumerate(self.axes):
            flipped = dim > 0 and self.flips[dim - 1]
            to_original[axis, dim] = -1.0 if flipped else 1.0
            to_original[axis, 3] = (self.original_shape[axis] - 1) if flipped else 0.0
        return self.affine @ to_original @ to_oriented

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (_to_lists(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        try:
            return cls(
                original_shape=tuple(int(v) for v in d["original_shape"]),
                original_affine=tuple(tuple(float(v) for v in row) for row in d["original_affine"]),
                original_spacing=tuple(float(v) for v in d["original_spacing"]),
                slice_axis=int(d["slice_axis"]),
                inplane_axes=tuple(int(v) for v in d["inplane_axes"]),
                flips=tuple(bool(v) for v in d["flips"]),
                resampled_shape=tuple(int(v) for v in d["resampled_shape"]),
                crop_start=tuple(int(v) for v in d["crop_start"]),
                crop_size=int(d["crop_size"]),
                target_spacing=float(d["target_spacing"]),
            )
        except KeyError as exc:
            raise ValueError(f"geometry: missing key {exc.args[0]!r}") from exc


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


# ---------------------------------------------------------------------------------------------- forward


def orient(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Original voxel order -> (S, H, W) canonical order (transpose + flips, a view when possible)."""
    out = np.transpose(array, geometry.axes)
    if geometry.flips[0]:
        out = out[:, ::-1]
    if geometry.flips[1]:
        out = out[:, :, ::-1]
    return out


def unorient(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Inverse of `orient` on the last three axes (leading axes, e.g. channels, are kept)."""
    lead = array.ndim - 3
    if geometry.flips[0]:
        array = np.flip(array, lead + 1)
    if geometry.flips[1]:
        array = np.flip(array, lead + 2)
    inverse = np.argsort(geometry.axes)
    return np.ascontiguousarray(np.transpose(array, (*range(lead), *(lead + int(a) for a in inverse))))


def normalise_intensity(array: np.ndarray, clip_percentiles: tuple[float, float] | list[float]) -> np.ndarray:
    """Clip to percentiles of the whole volume, then scale to [0, 1]; robust to a few hot voxels."""
    array = np.asarray(array, dtype=np.float32)
    lo, hi = np.percentile(array, [float(clip_percentiles[0]), float(clip_percentiles[1])])
    if not hi > lo:  # constant image: nothing to scale
        return np.zeros_like(array, dtype=np.float32)
    out = (array - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def resample_inplane(array: np.ndarray, in_spacing: tuple[float, float], out_spacing: tuple[float, float],
                     out_shape: tuple[int, int], *, order: int,
                     window: tuple[tuple[int, int], tuple[int, int]] | None = None) -> np.ndarray:
    """Resample the last two axes of (S, H, W) onto a grid of `out_shape` x `out_spacing`, same centre.

    Output index o samples input coordinate c_in + (o - c_out) * out_spacing / in_spacing with c = (n-1)/2:
    an explicit map, so the output shape is exactly `out_shape` (no zoom rounding) and equal grids give
    the input back unchanged. Outside the input the edge value is repeated (at most half a pixel).
    `window` = (start, shape) computes only that part of the output grid (e.g. the crop), with the same values.
    Slice by slice in 2D: nothing is ever interpolated across slices.
    """
    start, shape = window if window is not None else ((0, 0), tuple(out_shape))
    n_in = array.shape[1:]
    scale = [o / i for o, i in zip(out_spacing, in_spacing)]
    offset = [(n - 1) / 2.0 + (st - (m - 1) / 2.0) * sc for n, m, st, sc in zip(n_in, out_shape, start, scale)]
    if tuple(shape) == tuple(n_in) and all(sc == 1.0 for sc in scale) and all(o == 0.0 for o in offset):
        return array.copy()
    out = np.empty((array.shape[0], *shape), dtype=array.dtype)
    for s in range(array.shape[0]):
        ndimage.affine_transform(array[s], np.array(scale), offset=np.array(offset), output_shape=tuple(shape),
                                 output=out[s], order=order, mode="nearest", prefilter=False)
    return out


def resample_labels(labels: np.ndarray, in_spacing: tuple[float, float], out_spacing: tuple[float, float],
                    out_shape: tuple[int, int], *,
                    window: tuple[tuple[int, int], tuple[int, int]] | None = None) -> np.ndarray:
    """Per-label linear interpolation of one-hot maps, then argmax: thin structures survive downsampling."""
    shape = (labels.shape[0], *(window[1] if window is not None else out_shape))
    values = np.unique(labels)
    if len(values) == 1:
        return np.full(shape, values[0], dtype=np.uint8)
    best = np.full(shape, -1.0, dtype=np.float32)
    out = np.zeros(shape, dtype=np.uint8)
    for value in values:
        prob = resample_inplane((labels == value).astype(np.float32), in_spacing, out_spacing, out_shape,
                                order=1, window=window)
        better = prob > best
        best[better] = prob[better]
        out[better] = value
    return out


def crop_or_pad(array: np.ndarray, start: tuple[int, int], size: int, fill: float = 0) -> np.ndarray:
    """Window [start, start + size) of the last two axes; positions outside the array get `fill`."""
    out = np.full((*array.shape[:-2], size, size), fill, dtype=array.dtype)
    _copy_window(src=array, dst=out, start=start)
    return out


def uncrop(array: np.ndarray, start: tuple[int, int], shape: tuple[int, int], fill: float = 0) -> np.ndarray:
    """Inverse of `crop_or_pad`: put the window back into a `shape` grid; regions cut off get `fill`."""
    out = np.full((*array.shape[:-2], *shape), fill, dtype=array.dtype)
    _copy_window(src=array, dst=out, start=tuple(-s for s in start))
    return out


def _copy_window(src: np.ndarray, dst: np.ndarray, start: tuple[int, ...]) -> None:
    """dst[..., i, j] = src[..., i + start0, j + start1] wherever both exist."""
    src_sl, dst_sl = [], []
    for s, n_src, n_dst in zip(start, src.shape[-2:], dst.shape[-2:]):
        lo, hi = max(0, -s), min(n_dst, n_src - s)
        if hi <= lo:
            return
        dst_sl.append(slice(lo, hi))
        src_sl.append(slice(lo + s, hi + s))
    dst[(..., *dst_sl)] = src[(..., *src_sl)]


def make_geometry(shape: tuple[int, ...], affine: np.ndarray, cfg: PreprocessConfig) -> Geometry:
    """The geometry of a volume under `cfg`; depends on the image header only, never on a mask."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    slice_axis, inplane, flips = canonical_axes(affine)
    resampled = tuple(max(1, int(round(shape[a] * spacing[a] / cfg.target_spacing))) for a in inplane)
    crop = int(cfg.crop_size)
    return Geometry(
        original_shape=tuple(int(n) for n in shape),
        original_affine=tuple(tuple(float(v) for v in row) for row in affine),
        original_spacing=spacing,
        slice_axis=slice_axis,
        inplane_axes=inplane,
        flips=flips,
        resampled_shape=resampled,
        crop_start=tuple((m - crop) // 2 for m in resampled),
        crop_size=crop,
        target_spacing=float(cfg.target_spacing),
    )


def preprocess_volume(image: Volume, mask: Volume | None, cfg: PreprocessConfig, ref: CaseRef) -> PreparedCase:
    """Orient, normalise, resample in-plane and crop one case (see module docstring)."""
    if image.array.ndim != 3:
        raise DataError(image.path, f"expected a 3D volume, got shape {image.shape}")
    if mask is not None and mask.shape != image.shape:
        raise DataError(mask.path, f"mask shape {mask.shape} differs from image shape {image.shape}")
    try:
        geometry = make_geometry(image.shape, image.affine, cfg)
    except ValueError as exc:
        raise DataError(image.path, str(exc)) from exc
    target = (geometry.target_spacing, geometry.target_spacing)

    # Only the part of the resampled grid inside the crop is computed; the rest of the crop is padding.
    window = geometry.crop_window
    window_in_crop = tuple(s - w for s, w in zip(geometry.crop_start, window[0]))

    oriented = normalise_intensity(orient(image.array, geometry), cfg.clip_percentiles)
    resampled = resample_inplane(oriented, geometry.inplane_spacing, target, geometry.resampled_shape, order=1,
                                 window=window)
    image_out = crop_or_pad(resampled, window_in_crop, geometry.crop_size)

    mask_out = None
    if mask is not None:
        labels = orient(np.asarray(mask.array).astype(np.uint8, copy=False), geometry)
        resampled_labels = resample_labels(labels, geometry.inplane_spacing, target, geometry.resampled_shape,
                                           window=window)
        mask_out = crop_or_pad(resampled_labels, window_in_crop, geometry.crop_size)
        lost = _labelled_outside_crop(labels, geometry)
        if lost > 0:
            _warn_cropped(mask.path or ref.case_id, lost, geometry)
    return PreparedCase(ref=ref, image=image_out, mask=mask_out, geometry=geometry)


def _labelled_outside_crop(oriented_labels: np.ndarray, geometry: Geometry) -> int:
    """Labelled original pixels whose centre falls outside the crop window (the centred crop cuts them off)."""
    inside = []
    for n, m, spacing, start in zip(oriented_labels.shape[1:], geometry.resampled_shape, geometry.inplane_spacing,
                                    geometry.crop_start):
        pos = (m - 1) / 2.0 + (np.arange(n) - (n - 1) / 2.0) * spacing / geometry.target_spacing
        inside.append((pos >= start - 0.5) & (pos < start + geometry.crop_size - 0.5))
    labelled = oriented_labels != 0
    return int(labelled.sum() - labelled[:, inside[0]][:, :, inside[1]].sum())


def _warn_cropped(path, lost: int, geometry: Geometry) -> None:
    from data.types import DataWarning

    warnings.warn(f"{path}: the {geometry.crop_size}-pixel crop around the image centre cuts off {lost} labelled "
                  f"voxels; consider a larger crop_size", DataWarning, stacklevel=3)


def preprocess_case(ref: CaseRef, cfg: PreprocessConfig, label_map: dict[int, int] | None = None, *,
                    role: str = "train", require_mask: bool = True) -> PreparedCase:
    """Read + validate + remap labels (`data.validate.load_case`), then `preprocess_volume`."""
    image, mask = load_case(ref, label_map, require_mask=require_mask, role=role)
    return preprocess_volume(image, mask, cfg, ref)


# ---------------------------------------------------------------------------------------------- inverse


def _check_prepared(array: np.ndarray, geometry: Geometry, what: str) -> None:
    if tuple(array.shape[-3:]) != geometry.prepared_shape:
        raise ValueError(f"{what}: expected trailing shape (S, H, W) = {geometry.prepared_shape}, "
                         f"got {tuple(array.shape)}")


def to_original_labels(labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(S, H, W) labels -> uint8 labels on the original voxel grid (original shape; pairs with its affine).

    Regions outside the crop become background; in-plane resampling back is nearest-neighbour on exact
    original sampling coordinates. Prefer `to_original_probabilities` + argmax for predictions.
    """
    labels = np.asarray(labels)
    _check_prepared(labels, geometry, "labels")
    full = uncrop(labels.astype(np.uint8, copy=False), geometry.crop_start, geometry.resampled_shape, fill=0)
    n_h, n_w = geometry.oriented_shape[1:]
    target = (geometry.target_spacing, geometry.target_spacing)
    back = resample_inplane(full, target, geometry.inplane_spacing, (n_h, n_w), order=0)
    return unorient(back, geometry).astype(np.uint8, copy=False)


def to_original_probabilities(probs: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(C, S, H, W) class probabilities -> (C, X, Y, Z) float32 on the original grid, linear interpolation.

    Outside the crop the background channel (0) is 1 and the others 0, so an argmax there gives background.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 4:
        raise ValueError(f"probabilities: expected (C, S, H, W), got shape {probs.shape}")
    _check_prepared(probs, geometry, "probabilities")
    n_h, n_w = geometry.oriented_shape[1:]
    target = (geometry.target_spacing, geometry.target_spacing)
    channels = []
    for c, channel in enumerate(probs):
        full = uncrop(channel, geometry.crop_start, geometry.resampled_shape, fill=1.0 if c == 0 else 0.0)
        channels.append(resample_inplane(full, target, geometry.inplane_spacing, (n_h, n_w), order=1))
    return unorient(np.stack(channels), geometry).astype(np.float32, copy=False)
