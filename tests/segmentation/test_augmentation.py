"""`segmentation.augmentation`: `standard` as it always was, `strong` (nnU-Net-grade) that never mirrors the heart,
keeps image and label aligned and stays a pure function of each sample's augmentation seed."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, Randomizable
from scipy import ndimage

from data.types import CaseRef, PreparedCase
from segmentation.augmentation import STRONG, StrongAugmentation, strong_transforms
from segmentation.datasets import REAL, build_train_transforms, make_train_stream
from tests.segmentation.cases import prepared_case, tiny_config

FIXTURE = Path(__file__).parent / "fixtures" / "standard_augmentation.npz"
STANDARD_RUNS = {"all_on": dict(affine_prob=1.0, intensity_prob=1.0, flip_prob=0.5), "defaults": {}}
SIZE = 64
SPATIAL_PS = ("rotate_p", "scale_p", "elastic_p")
NO_INTENSITY = dataclasses.replace(STRONG, **{f.name: 0.0 for f in dataclasses.fields(STRONG)
                                              if f.name.endswith("_p") and f.name not in SPATIAL_PS})
SPATIAL_ONLY = dataclasses.replace(NO_INTENSITY, **{name: 1.0 for name in SPATIAL_PS})  # every spatial one, always


def heart_slice() -> np.ndarray:
    """(1, H, W) labels with three landmarks around the LV: the RV to its left, a MYO blob above it."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    label = np.zeros((SIZE, SIZE), np.uint8)
    for value, (cy, cx, r) in ((1, (32, 18, 5)), (2, (19, 32, 4)), (3, (32, 32, 6))):
        label[np.hypot(yy - cy, xx - cx) <= r] = value
    return label[None]


def one_slice_case(label: np.ndarray) -> PreparedCase:
    ref = CaseRef("h0", "ED", Path("/nonexistent/h0_ED.nii.gz"), None)
    return PreparedCase(ref=ref, image=(label / 3.0).astype(np.float32), mask=label.copy(), geometry=None)


def augmented(label: np.ndarray, seeds, table: StrongAugmentation | None = None,
              **cfg) -> list[dict[str, torch.Tensor]]:
    """The training stream's samples of `label` (its image = label / 3) under each augmentation seed; `table`:
    `strong` with other values, seeded as the stream seeds its own transforms."""
    stream = make_train_stream("real", [one_slice_case(label)], None, tiny_config(augment=True, **cfg), seed=0)
    if table is not None:
        ensure_typed = stream.transforms.transforms[-1]
        stream.transforms = Compose([*strong_transforms((SIZE, SIZE), stream.cfg.flip_prob, table), ensure_typed])
        for transform in stream.transforms.transforms:
            if isinstance(transform, Randomizable):
                transform.set_random_state(state=stream.random_state)
    return stream.__getitems__([(REAL, 0, int(seed)) for seed in seeds])


def landmarks(label: np.ndarray) -> tuple[float, int]:
    """Angle (degrees) of the RV seen from the LV, and the heart's handedness: the sign of the turn from the
    LV->RV direction to the LV->MYO-blob direction. Rotations keep the sign, a mirror flips it."""
    lv, rv, myo = (np.array(ndimage.center_of_mass(label == v)) for v in (3, 1, 2))
    (ry, rx), (my, mx) = rv - lv, myo - lv
    return math.degrees(math.atan2(ry, rx)), int(np.sign(rx * my - ry * mx))


def test_standard_is_unchanged():
    """`standard` gives the batches the implementation gave before `strong` existed (fixture written then, at
    commit 5031385, by this same code); tolerances only for other CPUs' last bits."""
    cases = [prepared_case(f"r{i}", "ED", seed=i) for i in range(2)]
    before = np.load(FIXTURE)
    for name, overrides in STANDARD_RUNS.items():
        stream = make_train_stream("real", cases, None, tiny_config(augment=True, batch_size=4, **overrides), seed=7)
        samples = stream.__getitems__(stream.plan(0))
        images = np.stack([s["image"].numpy() for s in samples])
        labels = np.stack([s["label"].numpy() for s in samples])
        np.testing.assert_allclose(images, before[f"{name}_image"], rtol=1e-5, atol=1e-5)
        assert (labels != before[f"{name}_label"]).mean() < 0.002  # a nearest-neighbour tie may fall otherwise


def test_strong_never_mirrors_the_heart():
    label = heart_slice()
    angle0, hand0 = landmarks(label[0])
    assert landmarks(label[0, :, ::-1])[1] == -hand0  # the measure sees a mirror
    outputs = augmented(label, range(300), augmentation="strong")
    turns = [landmarks(s["label"][0].numpy()) for s in outputs]
    assert {hand for _, hand in turns} == {hand0}
    offsets = [abs((angle - angle0 + 180) % 360 - 180) for angle, _ in turns]
    # rotation +-30 deg, plus what elastic deformation and zoom do to the landmarks' centroids
    assert max(offsets) < STRONG.rotate_deg + 12 and max(offsets) > 15
    flipped = augmented(label, range(20), augmentation="strong", flip_prob=1.0)  # both axes: a 180 deg rotation
    assert {landmarks(s["label"][0].numpy())[1] for s in flipped} == {hand0}


def test_strong_keeps_image_and_label_aligned():
    """The label is the same spatial transform of the mask, nearest-neighbour: with every spatial transform on and
    the image equal to the mask (/ 3), the (bilinear) image rounds to the label wherever the label is locally
    uniform, and almost everywhere else (edges: where nearest and linear interpolation may part)."""
    label = heart_slice()
    for sample in augmented(label, range(10), SPATIAL_ONLY, augmentation="strong"):
        image, moved = np.rint(3 * sample["image"][0].numpy()), sample["label"][0].numpy()
        uniform = ndimage.maximum_filter(moved, 5) == ndimage.minimum_filter(moved, 5)
        assert uniform.mean() > 0.6 and not np.array_equal(moved, label[0])
        np.testing.assert_array_equal(image[uniform], moved[uniform])
        assert (image == moved).mean() > 0.95
        assert set(np.unique(moved).tolist()) == {0, 1, 2, 3}


def test_intensity_transforms_touch_the_image_only():
    label = heart_slice()
    full = augmented(label, range(8), augmentation="strong")
    spatial = augmented(label, range(8), NO_INTENSITY, augmentation="strong")
    for a, b in zip(full, spatial):
        assert torch.equal(a["label"], b["label"])
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(full, spatial))


def test_strong_is_a_pure_function_of_the_samples_seed(small_cases):
    cfg = tiny_config(augment=True, augmentation="strong", batch_size=6)
    stream = make_train_stream("real", small_cases, None, cfg, seed=3)
    keys = stream.plan(0)
    batch = stream.__getitems__(keys)
    again = make_train_stream("real", small_cases, None, cfg, seed=3)
    alone = [again.__getitems__([key])[0] for key in reversed(keys)][::-1]  # fresh stream, other order, one by one
    for a, b in zip(batch, alone):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    source, index, seed = keys[0]
    other = stream.__getitems__([(source, index, seed + 1)])[0]
    assert not torch.equal(other["image"], batch[0]["image"])


def test_loader_works_without_workers(small_cases):
    cfg = tiny_config(augment=True, augmentation="strong", batch_size=4, steps=3, num_workers=0)
    batches = list(make_train_stream("real", small_cases, None, cfg, seed=1).loader(0, 3))
    assert len(batches) == 3
    for batch in batches:
        assert batch["image"].shape == (4, 1, 32, 32) and batch["image"].dtype == torch.float32
        assert batch["label"].dtype == torch.uint8 and set(batch["label"].unique().tolist()) <= {0, 1, 2, 3}
        assert torch.isfinite(batch["image"]).all()
    assert build_train_transforms(tiny_config(augment=False, augmentation="strong"), (32, 32)) is None


@pytest.mark.parametrize("augmentation", ["standard", "strong"])
def test_both_settings_build_from_the_config(augmentation):
    transforms = build_train_transforms(tiny_config(augmentation=augmentation), (32, 32))
    names = [type(t).__name__ for t in transforms.transforms]
    assert ("Rand2DElasticd" not in names) and ("RandSmoothDeformd" in names) == (augmentation == "strong")
    assert all("Flip" not in name or t.flipper.spatial_axis == (0, 1)
               for name, t in zip(names, transforms.transforms))  # never a single-axis flip
