"""Quality metrics on constructed cases whose answer is known: identical sets, shifted sets, copies,
collapsed generators, hand-made intensities, a perfect segmenter."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from monai.networks.nets import DynUNet, UNet
from scipy import linalg, ndimage

from data.types import LABELS, NUM_CLASSES, STRUCTURES
from synthesis.quality import (QualityConfig, build_reference, diversity, evaluate_generator, frechet_distance,
                               index_training_set, intensity_stats, kernel_distance, memorisation, reference_row,
                               save_pairs_grid, segmentation_consistency, segmenter_features)
from tests.synthesis.test_generators import TISSUE, toy_pairs

SIZE = 32


def tiny_unet(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(spatial_dims=2, in_channels=1, out_channels=NUM_CLASSES, channels=(4, 8, 16), strides=(2, 2),
                **kwargs)


class PerfectSegmenter(torch.nn.Module):
    """Reads the label back from images made as label / 3: one-hot logits of the true mask."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # predict_probabilities asks for the device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = torch.round(x[:, 0] * 3).long().clamp(0, NUM_CLASSES - 1)
        return 10.0 * torch.nn.functional.one_hot(labels, NUM_CLASSES).movedim(-1, 1).float() + self.dummy


class StyledGenerator:
    """Label intensities scaled by a per-seed factor, plus per-seed noise: the seed matters."""

    def sample(self, masks: np.ndarray, *, seed: int, context=None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        image = TISSUE[masks] * rng.uniform(0.6, 1.2) + rng.normal(0, 0.05, masks.shape)
        return np.clip(image, 0, 1).astype(np.float32)


class CollapsedGenerator:
    """Ignores the seed: one image per mask."""

    def sample(self, masks: np.ndarray, *, seed: int, context=None) -> np.ndarray:
        return StyledGenerator().sample(masks, seed=0)


class CopyGenerator:
    """Returns training images whatever the mask: a memorising generator at its worst."""

    def __init__(self, train_images: np.ndarray):
        self.train_images = train_images

    def sample(self, masks: np.ndarray, *, seed: int, context=None) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return self.train_images[rng.choice(len(self.train_images), len(masks))].copy()


def toy_cases(n_patients: int, seed: int, slices: int = 6) -> list[SimpleNamespace]:
    """PreparedCase-like volumes: `slices` toy slices per patient."""
    masks, images = toy_pairs(n_patients * slices, SIZE, seed)
    return [SimpleNamespace(image=images[i * slices:(i + 1) * slices], mask=masks[i * slices:(i + 1) * slices],
                            patient_id=f"p{seed}_{i}") for i in range(n_patients)]


# ----------------------------------------------------------------------------------------- features


@pytest.mark.parametrize("network", ["unet", "unet_plain", "dynunet"])
def test_features_are_pooled_encoder_levels(network):
    """D = sum of the channels (encoder levels + bottleneck); batch size does not change them."""
    torch.manual_seed(0)
    model = {"unet": lambda: tiny_unet(num_res_units=1), "unet_plain": lambda: tiny_unet(num_res_units=0),
             "dynunet": lambda: DynUNet(2, 1, NUM_CLASSES, kernel_size=[3, 3, 3], strides=[1, 2, 2],
                                        upsample_kernel_size=[2, 2], filters=[4, 8, 16])}[network]()
    images = toy_pairs(5, SIZE)[1]
    features = segmenter_features(model, images, batch_size=2)
    assert features.shape == (5, 4 + 8 + 16) and np.isfinite(features).all()
    # Batch size changes which convolution kernels run (their summation order differs between CPUs), so the
    # tolerance is relative to the features' scale; features of another image differ by orders more.
    np.testing.assert_allclose(segmenter_features(model, images, batch_size=5), features, rtol=1e-4,
                               atol=1e-5 * np.abs(features).max())
    assert not any(m._forward_hooks for m in model.modules()), "hooks must be removed"


def test_features_reject_other_networks():
    with pytest.raises(TypeError, match="MONAI UNet or DynUNet"):
        segmenter_features(PerfectSegmenter(), np.zeros((1, 8, 8), np.float32))


# ---------------------------------------------------------------------------------------- FD / KID


@pytest.fixture(scope="module")
def feature_sets():
    """Features of one toy set, a resample of its distribution, and three shifted versions of the resample."""
    model = tiny_unet(num_res_units=1)
    a, b = toy_pairs(150, SIZE, seed=1)[1], toy_pairs(150, SIZE, seed=2)[1]
    noise = np.random.default_rng(0).normal(0, 0.1, b.shape)
    shifted = {"brighter": np.clip(b + 0.2, 0, 1), "gamma": b ** 2, "noisier": np.clip(b + noise, 0, 1),
               "blurred": ndimage.gaussian_filter(b, (0, 1.5, 1.5))}
    return (segmenter_features(model, a), segmenter_features(model, b),
            {k: segmenter_features(model, v.astype(np.float32)) for k, v in shifted.items()})


def test_identical_sets_have_zero_distance(feature_sets):
    a = feature_sets[0]
    assert frechet_distance(a, a) <= fd_rounding(a)
    kid, kid_sd = kernel_distance(a, a, subsets=20, subset_size=50)
    assert abs(kid) < 3 * kid_sd + 1e-9


def test_shifted_sets_are_farther_than_a_resample(feature_sets):
    a, b, shifted = feature_sets
    fd_resample, kid_resample = frechet_distance(a, b), kernel_distance(a, b)[0]
    for name, c in shifted.items():
        assert frechet_distance(a, c) > 10 * fd_resample, name
        assert kernel_distance(a, c)[0] > 10 * abs(kid_resample), name


def test_frechet_distance_matches_the_sqrtm_formula(rng):
    """pytorch-fid's formula with scipy.linalg.sqrtm, on well-conditioned data; and 1-D closed form."""
    a, b = rng.normal(size=(400, 6)), rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 1.0
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    expected = diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(linalg.sqrtm(s_a @ s_b).real)
    assert frechet_distance(a, b, eps=0.0) == pytest.approx(expected, rel=1e-6)
    x, y = rng.normal(2.0, 1.0, size=(500, 1)), rng.normal(0.0, 3.0, size=(500, 1))
    closed = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert frechet_distance(x, y, eps=0.0) == pytest.approx(closed, rel=1e-6)


def fd_rounding(a: np.ndarray) -> float:
    """What rounding can leave of FD(a, a) = 2 tr(S) - 2 sum sqrt(eig(S^1/2 S S^1/2)): a difference of sums of
    size tr(S), whose last bits differ between BLAS builds (4.6e-8 seen on an AVX2-only AMD CPU for tr(S) ~ 50).
    1e-7 of that scale still flags any real error: two different sets are O(tr(S)) apart."""
    return 1e-7 * 2 * float(np.trace(np.atleast_2d(np.cov(a, rowvar=False))))


def test_frechet_distance_survives_singular_covariances(rng):
    """Fewer samples than dimensions: finite, non-negative, 0 for identical sets."""
    a, b = rng.normal(size=(10, 50)), rng.normal(size=(10, 50)) + 0.5
    assert frechet_distance(a, a) <= fd_rounding(a)
    assert np.isfinite(frechet_distance(a, b)) and frechet_distance(a, b) > 0
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, b[:, :3])


# -------------------------------------------------------------------------------------- memorisation


@pytest.fixture(scope="module")
def train_index():
    """200 training slices of 20 'patients'. An independent set is expected to have ~2/200 of its slices
    closer than the closest real-real pair (the minimum is taken over ~N^2/2 pairs, a slice's over N)."""
    masks, images = toy_pairs(200, SIZE, seed=10)
    return index_training_set(images, np.repeat([f"p{i}" for i in range(20)], 10), size=16)


def test_copies_of_training_images_are_flagged(train_index):
    picks = np.array([3, 17, 42, 199])
    copies = np.clip(train_index.images[picks] * 0.8 + 0.1, 0, 1)  # brightness/contrast do not hide a copy
    result = memorisation(copies, train_index, n_pairs=3)
    assert result.flagged and result.memorised_fraction == 1.0
    np.testing.assert_array_equal(result.nearest, picks)
    assert result.distance.max() < 1e-6 and result.ssim.min() > 0.9
    assert list(result.pairs.columns) == ["set_index", "train_index", "distance", "ssim"] and len(result.pairs) == 3


@pytest.mark.parametrize("kind", ["same_distribution", "noise"])
def test_independent_images_are_not_flagged(train_index, kind):
    images = (toy_pairs(40, SIZE, seed=11)[1] if kind == "same_distribution"
              else np.random.default_rng(1).uniform(0, 1, (40, SIZE, SIZE)).astype(np.float32))
    result = memorisation(images, train_index)
    assert not result.flagged and result.memorised_fraction <= 0.05
    assert np.median(result.distance) >= np.median(train_index.distance) * (1.0 if kind == "noise" else 0.5)


def test_a_copy_must_be_close_and_structurally_similar(train_index):
    """Noise-free images of new masks correlate with the noisy training slices better than two noisy real
    slices do (distance alone flags them); counted as copies only when their SSIM passes the floor too."""
    masks, _ = toy_pairs(40, SIZE, seed=11)
    smooth = TISSUE[masks].astype(np.float32)
    loose = memorisation(smooth, train_index, min_ssim=0.0)
    assert loose.closer_than_real_fraction > 0.05 and loose.flagged  # toy masks barely differ: near-copies
    floor = float(np.max(loose.ssim)) + 1e-3
    strict = memorisation(smooth, train_index, min_ssim=floor)
    assert strict.closer_than_real_fraction == loose.closer_than_real_fraction
    assert strict.memorised_fraction == 0.0 and not strict.flagged
    copies = np.clip(train_index.images[:8] * 0.8 + 0.1, 0, 1)
    assert memorisation(copies, train_index, min_ssim=0.9).memorised_fraction == 1.0  # real copies pass any floor


def test_real_reference_skips_slices_of_the_same_patient(train_index):
    """Each patient's ED and ES are near-copies; only other patients count for the real-real threshold."""
    doubled = np.concatenate([train_index.images, np.clip(train_index.images + 0.01, 0, 1)])
    groups = np.concatenate([train_index.groups, train_index.groups])
    index = index_training_set(doubled, groups, size=16)
    assert index.threshold == pytest.approx(train_index.threshold, rel=1e-3) and index.threshold > 0.01
    assert np.all(groups[np.arange(len(groups))] != groups[_nearest_other(index)])
    with pytest.raises(ValueError, match="at least 2 patients"):
        index_training_set(doubled, ["p0"] * len(doubled))


def _nearest_other(index) -> np.ndarray:
    from synthesis.quality import _nearest

    return _nearest(index.vectors, index.vectors, index.groups, index.groups)[1]


def test_identical_slices_of_two_patients_are_reported_not_used(train_index):
    """ACDC files patient074 and patient076 as two patients with the same images: they would make the
    real-real threshold 0, and then even a copy of the training set would pass."""
    images = np.concatenate([train_index.images, train_index.images[:10]])
    groups = np.concatenate([train_index.groups, ["twin"] * 10])
    with pytest.warns(UserWarning, match="identical slices"):
        index = index_training_set(images, groups, size=16)
    assert index.duplicates == [("p0", "twin")]
    assert index.threshold > 0.01
    assert memorisation(train_index.images[:20], index).flagged


# ---------------------------------------------------------------------------------------- diversity


def test_collapsed_generator_has_no_diversity():
    masks = toy_pairs(6, SIZE)[0]
    collapsed = diversity(CollapsedGenerator(), masks, n_styles=3)
    styled = diversity(StyledGenerator(), masks, n_styles=3)
    assert collapsed["diversity_l1"] == 0.0 and collapsed["diversity_ratio"] == 0.0
    assert collapsed["diversity_one_minus_ssim"] == pytest.approx(0.0, abs=1e-6)
    assert styled["diversity_l1"] > 0.02 and styled["diversity_one_minus_ssim"] > 0.05
    assert styled["diversity_ratio"] > 0.1 and styled["diversity_between_l1"] > 0
    assert styled["samples"].shape == (3, *masks.shape)


class BackgroundKeepingGenerator:
    """The real slice (context) outside the heart, the styled heart inside: only the heart varies with the seed."""

    def sample(self, masks: np.ndarray, *, seed: int, context=None) -> np.ndarray:
        return np.where(masks > 0, StyledGenerator().sample(masks, seed=seed), context).astype(np.float32)


def test_the_heart_only_ratio_does_not_penalise_a_kept_background():
    """Over whole slices a generator that keeps the real background looks style-blind next to the real slices
    behind different masks; over the heart (the union of both hearts for 'between') it is judged on its
    painting. For a generator that paints everything from the mask, both ratios are of the same order."""
    masks, images = toy_pairs(6, SIZE)
    context = np.clip(images + np.random.default_rng(0).normal(0, 0.2, images.shape), 0, 1).astype(np.float32)
    kept = diversity(BackgroundKeepingGenerator(), masks, n_styles=3, context=context)
    heart = masks > 0
    within = np.mean([np.abs(kept["samples"][i] - kept["samples"][j])[heart].mean()
                      for i, j in [(0, 1), (0, 2), (1, 2)]])
    assert kept["diversity_heart_l1"] == pytest.approx(within, rel=1e-6)
    assert kept["diversity_heart_ratio"] > 2 * kept["diversity_ratio"]
    styled = diversity(StyledGenerator(), masks, n_styles=3)
    assert 0.25 < styled["diversity_heart_ratio"] / styled["diversity_ratio"] < 4
    assert np.isnan(diversity(CollapsedGenerator(), masks[:1], n_styles=2)["diversity_heart_ratio"])


# ---------------------------------------------------------------------------------- intensity, Dice


def test_intensity_stats_match_numpy(rng):
    masks = rng.integers(0, NUM_CLASSES, (3, 10, 10)).astype(np.uint8)
    masks[masks == 1] = 0  # no RV at all
    images = rng.uniform(0, 1, masks.shape).astype(np.float32)
    stats = intensity_stats(images, masks).set_index("structure")
    assert list(stats.index) == list(LABELS.values())
    for label, name in LABELS.items():
        values = images[masks == label]
        assert stats.loc[name, "n_pixels"] == values.size
        if values.size:
            assert stats.loc[name, "mean"] == pytest.approx(values.mean(), rel=1e-6)
            assert stats.loc[name, "sd"] == pytest.approx(values.std(), rel=1e-6)
    assert np.isnan(stats.loc["RV", "mean"])


def test_consistency_of_a_perfect_segmenter_is_one():
    masks = [toy_pairs(4, SIZE, seed=s)[0] for s in range(3)]
    masks[1][masks[1] == 1] = 0  # a volume without RV: both empty counts as 1, as in the segmentation stage
    images = [(m / 3.0).astype(np.float32) for m in masks]
    scores = segmentation_consistency(PerfectSegmenter(), images, masks)
    assert scores == {**{s: pytest.approx(1.0) for s in STRUCTURES}, "mean": pytest.approx(1.0)}
    blank = segmentation_consistency(PerfectSegmenter(), [np.zeros_like(i) for i in images], masks)
    assert blank["LV"] == pytest.approx(0.0) and blank["RV"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="as many masks"):
        segmentation_consistency(PerfectSegmenter(), images, masks[:2])


# ------------------------------------------------------------------------------------------ one row


@pytest.fixture(scope="module")
def reference():
    cfg = QualityConfig(n_images=120, batch_size=16, kid_subsets=5, kid_subset_size=20, memorisation_size=16,
                        n_pairs=4, diversity_masks=4, n_styles=2, progress=False)
    return build_reference(tiny_unet(num_res_units=1), toy_cases(4, seed=20), toy_cases(20, seed=21), cfg)


def test_rows_for_generators_and_the_real_reference(reference, tmp_path):
    from synthesis.base import build_generator

    gmm = build_generator("gmm")
    gmm.fit(*toy_pairs(40, SIZE, seed=21), tmp_path / "gmm", seed=0)
    real = reference_row(reference)
    styled = evaluate_generator(StyledGenerator(), reference, "styled")
    copying = evaluate_generator(CopyGenerator(reference.index.images), reference, "copy")
    table = pd.DataFrame([real.row, styled.row, copying.row, evaluate_generator(gmm, reference).row])
    table = table.set_index("generator")
    assert list(table.index) == ["real", "styled", "copy", "gmm"]
    assert not table.loc["gmm", "memorisation_flagged"] and table.loc["gmm", "diversity_ratio"] > 0.1
    assert table.loc["real", "n_slices"] == 24 and table.loc["real", "n_train_slices"] == 120
    assert table.loc["real", "consistency_dice_mean"] == table.loc["real", "consistency_dice_real_mean"]
    assert (table["fd_noise_floor"] == table["fd_noise_floor"].iloc[0]).all()
    assert not table.loc["real", "memorisation_flagged"] and not table.loc["styled", "memorisation_flagged"]
    assert table.loc["copy", "memorisation_flagged"] and table.loc["copy", "memorised_fraction"] == 1.0
    assert table.loc["styled", "diversity_l1"] > 0 and np.isnan(table.loc["real", "diversity_l1"])
    assert table.loc["real", "diversity_between_l1"] > 0
    for name in LABELS.values():
        assert f"intensity_{name}_mean" in table.columns and f"intensity_{name}_sd" in table.columns
    assert styled.style_samples.shape == (2, 4, SIZE, SIZE) and real.style_samples is None
    assert styled.images.shape == (24, SIZE, SIZE) and styled.masks.shape == styled.images.shape
    path = save_pairs_grid(tmp_path / "pairs.png", copying.images, reference.index.images, copying.pairs, "copy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*")), "no temp file left behind"
