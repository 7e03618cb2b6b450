"""Preprocessing for 2D work and its exact inverse onto the original grid (synthetic volumes, small)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data.config import PreprocessConfig
from data.io import read_volume, write_nifti
from data.preprocess import (Geometry, normalise_intensity, preprocess_volume, to_original_labels,
                             to_original_probabilities)
from data.types import CaseRef, DataError, Volume
from data.validate import DataWarning

REF = CaseRef(patient_id="p001", phase="ED", image_path=None, mask_path=None)


def rotation(angles_deg: tuple[float, float, float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(spacing, rot=(0.0, 0.0, 0.0), flips=(1, 1, 1), origin=(10.0, -20.0, 5.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation(rot) @ np.diag(np.asarray(spacing, float) * np.asarray(flips, float))
    affine[:3, 3] = origin
    return affine


def heart_case(shape, spacing, slice_axis=2, centre_mm=(0.0, 0.0), rng=None):
    """Image + mask of a short-axis-like phantom: LV disk, MYO ring, RV crescent, sized in mm."""
    rng = rng or np.random.default_rng(0)
    inplane = [a for a in range(3) if a != slice_axis]
    n_h, n_w, n_s = shape[inplane[0]], shape[inplane[1]], shape[slice_axis]
    y = (np.arange(n_h) - (n_h - 1) / 2) * spacing[inplane[0]] - centre_mm[0]
    x = (np.arange(n_w) - (n_w - 1) / 2) * spacing[inplane[1]] - centre_mm[1]
    yy, xx = np.meshgrid(y, x, indexing="ij")
    r = np.hypot(yy, xx)
    sl = np.zeros((n_h, n_w), np.uint8)
    sl[(np.hypot(yy, xx - 30) < 20) & (r >= 22)] = 1
    sl[(r >= 15) & (r < 22)] = 2
    sl[r < 15] = 3
    mask = np.repeat(sl[..., None], n_s, axis=-1)
    mask[..., 0] = 0  # a slice above the base
    image = (100 + 300 * (mask == 3) + 150 * (mask == 1) + 60 * (mask == 2)).astype(np.float32)
    image += rng.normal(0, 10, image.shape).astype(np.float32)
    order = np.argsort([*inplane, slice_axis])  # (H, W, S) -> file order
    return np.transpose(image, order).copy(), np.transpose(mask, order).copy()


def prepare(image, mask, affine, **cfg):
    return preprocess_volume(Volume(image, affine), None if mask is None else Volume(mask, affine),
                             PreprocessConfig(**cfg), REF)


def dice(a, b, label):
    a, b = a == label, b == label
    return 2 * (a & b).sum() / (a.sum() + b.sum())


CASES = {
    "axis-aligned LPS, even": dict(shape=(100, 90, 8), spacing=(1.5, 1.5, 10.0), flips=(-1, -1, 1)),
    "oblique, odd": dict(shape=(101, 87, 7), spacing=(1.5, 1.5, 8.0), rot=(25.0, -30.0, 40.0)),
    "slice axis first, oblique": dict(shape=(9, 96, 80), spacing=(10.0, 1.5, 1.5), rot=(-60.0, 20.0, 10.0),
                                      slice_axis=0),
    "slice axis middle, flipped": dict(shape=(70, 6, 77), spacing=(1.5, 9.0, 1.5), flips=(-1, 1, -1), slice_axis=1),
    "larger than crop": dict(shape=(160, 151, 5), spacing=(1.5, 1.5, 10.0), crop_size=96),
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_trip_is_exact_when_spacing_matches(name):
    c = dict(CASES[name])
    slice_axis = c.pop("slice_axis", 2)
    crop = c.pop("crop_size", 128)
    affine = make_affine(c["spacing"], c.get("rot", (0, 0, 0)), c.get("flips", (1, 1, 1)))
    image, mask = heart_case(c["shape"], c["spacing"], slice_axis)
    case = prepare(image, mask, affine, target_spacing=1.5, crop_size=crop)
    g = case.geometry

    assert case.image.shape == case.mask.shape == (c["shape"][slice_axis], crop, crop)
    assert case.image.dtype == np.float32 and case.mask.dtype == np.uint8
    assert g.slice_axis == slice_axis
    back = to_original_labels(case.mask, g)
    assert back.shape == mask.shape and back.dtype == np.uint8
    np.testing.assert_array_equal(back, mask)
    np.testing.assert_array_equal(g.affine, affine)


@pytest.mark.parametrize("spacing,shape", [((1.25, 1.25, 10.0), (121, 110, 6)),   # downsampled
                                           ((1.9, 1.9, 10.0), (80, 75, 6)),       # upsampled
                                           ((1.25, 1.6, 8.0), (120, 96, 5))])     # anisotropic in-plane
def test_round_trip_with_resampling_keeps_labels(spacing, shape):
    affine = make_affine(spacing, rot=(10.0, 15.0, -35.0))
    image, mask = heart_case(shape, spacing)
    case = prepare(image, mask, affine, target_spacing=1.5, crop_size=128)
    g = case.geometry
    assert g.resampled_shape == tuple(round(n * s / 1.5) for n, s in zip(shape[:2], spacing[:2]))
    back = to_original_labels(case.mask, g)
    assert back.shape == mask.shape
    for label in (1, 2, 3):
        assert dice(back, mask, label) > 0.95, label
    # Probabilities: argmax in original space is at least as good as nearest on labels.
    onehot = np.eye(4, dtype=np.float32)[case.mask].transpose(3, 0, 1, 2)
    probs = to_original_probabilities(onehot, g)
    assert probs.shape == (4, *shape)
    for label in (1, 2, 3):
        assert dice(probs.argmax(0), mask, label) > 0.95, label


def test_probability_argmax_agrees_with_labels():
    spacing = (1.5, 1.5, 10.0)
    image, mask = heart_case((150, 140, 4), spacing)  # the 96 crop cuts the image, not the heart
    case = prepare(image, mask, make_affine(spacing), crop_size=96)
    rng = np.random.default_rng(1)
    probs = np.eye(4, dtype=np.float32)[case.mask].transpose(3, 0, 1, 2) * 0.7 + rng.random((4, *case.mask.shape)) * 0.2
    labels = probs.argmax(0)
    back = to_original_probabilities(probs, case.geometry)
    np.testing.assert_array_equal(back.argmax(0), to_original_labels(labels, case.geometry))
    cut = np.ones(mask.shape, bool)
    cut[27:123, 22:118] = False  # outside the crop window: background with probability 1
    np.testing.assert_array_equal(back[0][cut], 1.0)
    np.testing.assert_array_equal(back[1:, cut], 0.0)


def test_reoriented_volumes_look_the_same():
    """The same anatomy stored with permuted/flipped voxel axes gives the same prepared slices."""
    spacing = (1.5, 1.5, 10.0)
    affine = make_affine(spacing, rot=(20.0, -25.0, 30.0))
    image, mask = heart_case((90, 84, 6), spacing, centre_mm=(12.0, -9.0))
    ref_case = prepare(image, mask, affine)

    perm, flip_axis = (2, 0, 1), 1  # new voxel axis d = old axis perm[d]; then flip new axis 1
    image2 = np.flip(np.transpose(image, perm), flip_axis).copy()
    mask2 = np.flip(np.transpose(mask, perm), flip_axis).copy()
    affine2 = affine.copy()
    affine2[:3, :3] = affine[:3, list(perm)]
    n = image2.shape[flip_axis]
    affine2[:3, 3] += affine2[:3, flip_axis] * (n - 1)
    affine2[:3, flip_axis] *= -1
    case2 = prepare(image2, mask2, affine2)

    assert case2.geometry.slice_axis == 0
    np.testing.assert_allclose(case2.image, ref_case.image, atol=1e-6)
    np.testing.assert_array_equal(case2.mask, ref_case.mask)
    np.testing.assert_array_equal(to_original_labels(case2.mask, case2.geometry), mask2)


def test_prepared_affine_places_slices_in_scanner_space():
    spacing = (1.25, 1.25, 8.0)
    affine = make_affine(spacing, rot=(15.0, 5.0, -20.0), flips=(-1, 1, 1))
    image, mask = heart_case((96, 100, 5), spacing)
    g = prepare(image, mask, affine).geometry
    # A prepared pixel that falls exactly on an original voxel: map it back and compare world positions.
    probe = np.zeros(g.prepared_shape, np.uint8)
    idx = (2, 64, 64)
    probe[idx] = 1
    world = g.prepared_affine() @ np.array([*idx, 1.0])
    back = to_original_labels(probe, g)
    orig_idx = np.argwhere(back == 1)
    assert len(orig_idx) >= 1
    nearest = min(orig_idx, key=lambda v: np.linalg.norm((affine @ np.array([*v, 1.0]) - world)[:3]))
    assert np.linalg.norm((affine @ np.array([*nearest, 1.0]) - world)[:3]) < max(spacing[:2])
    # Directions: prepared rows/cols have the target spacing, slices keep theirs.
    np.testing.assert_allclose(np.linalg.norm(g.prepared_affine()[:3, :3], axis=0), [8.0, 1.5, 1.5])


def test_crop_centre_ignores_the_mask():
    spacing = (1.5, 1.5, 10.0)
    affine = make_affine(spacing)
    image, mask_a = heart_case((140, 150, 4), spacing, centre_mm=(0.0, 0.0))
    _, mask_b = heart_case((140, 150, 4), spacing, centre_mm=(60.0, -75.0))
    a, none = prepare(image, mask_a, affine, crop_size=96), prepare(image, None, affine, crop_size=96)
    with pytest.warns(DataWarning, match="crop"):  # the crop stays centred even if it cuts the heart
        b = prepare(image, mask_b, affine, crop_size=96)
    assert a.geometry == b.geometry == none.geometry
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.image, none.image)
    assert none.mask is None


@pytest.mark.parametrize("shape", [(31, 40, 3), (200, 183, 3), (128, 128, 3), (127, 129, 3)])
def test_output_size_for_small_and_large_images(shape):
    spacing = (1.5, 1.5, 10.0)
    image, mask = heart_case(shape, spacing)
    mask[...] = 0
    mask[shape[0] // 2 - 3:shape[0] // 2 + 3, shape[1] // 2 - 4:shape[1] // 2 + 2] = 3
    case = prepare(image, mask, make_affine(spacing, flips=(-1, -1, 1)), crop_size=128)
    assert case.image.shape == (3, 128, 128)
    np.testing.assert_array_equal(to_original_labels(case.mask, case.geometry), mask)
    if shape[0] < 128:  # padding: zeros (the minimum after normalisation)
        assert case.image[:, 0, :].max() == 0.0


def test_intensity_normalisation_is_robust(rng):
    image = rng.gamma(2.0, 50.0, size=(60, 64, 5)).astype(np.float32)
    hot = image.copy()
    hot[3, 4, 2] = 1e7
    a, b = normalise_intensity(image, [0.5, 99.5]), normalise_intensity(hot, [0.5, 99.5])
    for out in (a, b):
        assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.abs(a - b).ravel()[np.arange(a.size) != np.ravel_multi_index((3, 4, 2), a.shape)].max() < 0.02
    assert np.median(b) > 0.1  # one hot pixel does not squash the image
    assert np.all(normalise_intensity(np.full((4, 4, 2), 7.0), [1, 99]) == 0.0)

    spacing = (1.3, 1.3, 10.0)
    case = prepare(hot, None, make_affine(spacing))
    assert case.image.min() >= 0.0 and case.image.max() <= 1.0


def test_geometry_json_round_trip():
    spacing = (1.25, 1.4, 8.0)
    g = prepare(*heart_case((70, 64, 4), spacing), make_affine(spacing, rot=(3, 4, 5))).geometry
    assert Geometry.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    with pytest.raises(ValueError, match="crop_size"):
        Geometry.from_dict({k: v for k, v in g.to_dict().items() if k != "crop_size"})


def test_bad_inputs_raise_clear_errors():
    spacing = (1.5, 1.5, 10.0)
    image, mask = heart_case((40, 40, 3), spacing)
    with pytest.raises(DataError, match="3D"):
        prepare(image[..., None], None, make_affine(spacing))
    with pytest.raises(DataError, match="mask shape"):
        prepare(image, mask[:, :-1], make_affine(spacing))
    with pytest.raises(DataError, match="spacing"):
        prepare(image, mask, np.diag([1.5, 0.0, 10.0, 1.0]))
    case = prepare(image, mask, make_affine(spacing))
    with pytest.raises(ValueError, match=r"\(S, H, W\)"):
        to_original_labels(case.mask[:, :-1], case.geometry)
    with pytest.raises(ValueError, match="C, S, H, W"):
        to_original_probabilities(case.image, case.geometry)


def test_nifti_round_trip_keeps_grid_and_affine(tmp_path):
    spacing = (1.25, 1.25, 10.0)
    affine = make_affine(spacing, rot=(30.0, 0.0, 10.0), flips=(-1, -1, 1))
    image, mask = heart_case((96, 88, 5), spacing)
    write_nifti(tmp_path / "img.nii.gz", image, affine)
    write_nifti(tmp_path / "gt.nii.gz", mask, affine, is_label=True)
    img_v, gt_v = read_volume(tmp_path / "img.nii.gz"), read_volume(tmp_path / "gt.nii.gz")
    case = preprocess_volume(img_v, gt_v, PreprocessConfig(), REF)
    back = to_original_labels(case.mask, case.geometry)
    out = write_nifti(tmp_path / "back.nii.gz", back, case.geometry.affine, is_label=True)
    back_v = read_volume(out)
    assert back_v.shape == gt_v.shape
    np.testing.assert_allclose(back_v.affine, gt_v.affine, atol=1e-5)
    for label in (1, 2, 3):
        assert dice(back_v.array, gt_v.array, label) > 0.95


def test_preprocess_case_reads_through_load_case(tmp_path):
    pytest.importorskip("data.validate")
    from data.preprocess import preprocess_case

    spacing = (1.5, 1.5, 10.0)
    affine = make_affine(spacing, flips=(-1, -1, 1))
    image, mask = heart_case((80, 72, 4), spacing)
    ref = CaseRef("p002", "ES", write_nifti(tmp_path / "img.nii.gz", image, affine),
                  write_nifti(tmp_path / "gt.nii.gz", mask, affine, is_label=True))
    case = preprocess_case(ref, PreprocessConfig())
    assert case.ref == ref and case.image.shape == (4, 128, 128)
    np.testing.assert_array_equal(to_original_labels(case.mask, case.geometry), mask)


def test_acdc_case_round_trip(acdc_root):
    from data.layouts import list_cases
    from data.preprocess import preprocess_case
    from data.validate import load_case

    ref = next(r for r in list_cases(acdc_root) if r.patient_id == "patient001")
    case = preprocess_case(ref, PreprocessConfig(target_spacing=1.5, crop_size=128))
    _, gt = load_case(ref)
    assert case.geometry.slice_axis == 2 and case.image.shape == (gt.shape[2], 128, 128)
    back = to_original_labels(case.mask, case.geometry)
    assert back.shape == gt.shape
    for label in (1, 2, 3):
        assert dice(back, gt.array, label) > 0.95, label


def test_windowed_resampling_equals_cropping_the_full_grid(rng):
    from data.preprocess import resample_inplane

    array = rng.random((3, 57, 64)).astype(np.float32)
    full = resample_inplane(array, (1.3, 1.1), (1.5, 1.5), (49, 47), order=1)
    part = resample_inplane(array, (1.3, 1.1), (1.5, 1.5), (49, 47), order=1, window=((5, 9), (30, 21)))
    np.testing.assert_allclose(part, full[:, 5:35, 9:30], atol=1e-6)
