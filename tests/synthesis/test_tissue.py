"""Tissue classes of the background (torso conditioning) and the generators that use them."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from data.types import NUM_CLASSES
from synthesis.base import build_generator, load_generator
from synthesis.tissue import TissueClasses, heart_labels, kmeans_1d
from tests.synthesis.test_generators import SIZE, tiny_config, toy_pairs

LEVELS = np.array([0.05, 0.45, 0.85], np.float32)  # air/lung, muscle, fat


def torso_pairs(n: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Toy hearts on a background of three tissues in bands whose position varies by slice."""
    masks, images = toy_pairs(n, seed=seed)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(n):
        bands = np.digitize(xx + yy * rng.uniform(-0.5, 0.5) + rng.uniform(-4, 4), [SIZE / 3, 2 * SIZE / 3])
        background = LEVELS[bands] + rng.normal(0, 0.02, (SIZE, SIZE))
        images[i] = np.where(masks[i] == 0, np.clip(background, 0, 1), images[i])
    return masks, images


def test_kmeans_1d_finds_separated_groups():
    x = np.concatenate([np.full(50, 0.1), np.full(30, 0.5), np.full(20, 0.9)]) + np.linspace(-0.01, 0.01, 100)
    np.testing.assert_allclose(kmeans_1d(x, 3), [0.1, 0.5, 0.9], atol=0.01)


def test_tissue_classes_recover_the_background_tissues():
    masks, images = torso_pairs()
    tissue = TissueClasses.fit(masks, images, 3, smooth_px=0.0)
    assert tissue.n_labels == NUM_CLASSES + 3
    cuts = np.asarray(tissue.thresholds)
    assert (LEVELS[:-1] < cuts).all() and (cuts < LEVELS[1:]).all()
    labels = tissue.label(masks, images)
    np.testing.assert_array_equal(labels[masks > 0], masks[masks > 0])  # the heart is kept as it is
    background = masks == 0
    expected = NUM_CLASSES + np.digitize(images, (LEVELS[1:] + LEVELS[:-1]) / 2)
    assert (labels[background] == expected[background]).mean() > 0.99
    np.testing.assert_array_equal(heart_labels(labels), masks)


def test_tissue_classes_are_fitted_on_the_training_slices_only(tmp_path):
    """The cut points come from the slices given to `fit`; labelling or sampling other slices (e.g. test
    patients' images as context) never moves them."""
    train_masks, train_images = torso_pairs(seed=0)
    other_masks, other_images = torso_pairs(seed=1)
    other_images = np.clip(other_images * 0.5 + 0.4, 0, 1)  # another scanner: a different background histogram
    gen = build_generator("gmm", tiny_config("gmm", tissue_classes=3))
    gen.fit(train_masks, train_images, tmp_path, seed=0)
    fitted = TissueClasses.fit(train_masks, train_images, 3, smooth_px=gen.config.tissue_smooth_px, seed=0)
    assert gen.tissue == fitted
    gen.sample(other_masks, seed=0, context=other_images)
    assert gen.tissue == fitted
    assert TissueClasses.fit(other_masks, other_images, 3, seed=0) != fitted  # so the check above can fail


def test_gmm_paints_the_context_tissues_with_their_fitted_intensities(tmp_path):
    masks, images = torso_pairs()
    gen = build_generator("gmm", tiny_config("gmm", tissue_classes=3, style_scale=0.0, noise_std=0.0,
                                             bias_field_coeff=0.0, texture_scale=0.0, partial_volume_sigma=0.0))
    gen.fit(masks, images, tmp_path, seed=0)
    labels = gen.tissue.label(masks, images)
    out = gen.sample(masks, seed=3, context=images)
    for k in range(NUM_CLASSES, gen.n_labels):  # each tissue at the mean of that tissue in the training slices
        np.testing.assert_allclose(out[labels == k].mean(), images[labels == k].mean(), atol=0.02)
    # without a real slice (a sampled mask) the background falls back to random regions
    fallback = gen.sample(masks, seed=3)
    assert fallback.shape == masks.shape and not np.allclose(fallback[masks == 0], out[masks == 0])


def test_gmm_real_background_keeps_the_slice_outside_the_heart(tmp_path):
    masks, images = torso_pairs()
    gen = build_generator("gmm", tiny_config("gmm", background="real", noise_std=0.0, bias_field_coeff=0.0))
    gen.fit(masks, images, tmp_path, seed=0)
    context = np.clip(images + 0.05, 0, 1)
    out = gen.sample(masks, seed=1, context=context)
    far = ndimage.distance_transform_edt(masks == 0, sampling=(1e3, 1, 1)) > 4 * gen.config.partial_volume_sigma
    np.testing.assert_allclose(out[far], context[far], atol=1e-3)
    assert not np.allclose(gen.sample(masks, seed=2, context=context)[masks > 0], out[masks > 0])
    with pytest.raises(ValueError, match="background 'real'.*context"):
        gen.sample(masks, seed=1)


@pytest.mark.parametrize("name", ["gmm", "cvae", "spade", "diffusion"])
def test_tissue_generators_round_trip_and_need_context(name, tmp_path):
    masks, images = torso_pairs()
    gen = build_generator(name, tiny_config(name, tissue_classes=3))
    gen.fit(masks, images, tmp_path / "fit", seed=0)
    assert gen.n_labels == NUM_CLASSES + 3
    out = gen.sample(masks[:2], seed=4, context=images[:2])
    assert out.shape == masks[:2].shape and 0 <= out.min() and out.max() <= 1
    path = gen.save(tmp_path / "gen.pt")
    again = load_generator(path)
    assert again.tissue == gen.tissue
    np.testing.assert_allclose(again.sample(masks[:2], seed=4, context=images[:2]), out, atol=1e-5)
    if name != "gmm":  # a learned generator cannot guess the torso: it was trained with tissue channels
        with pytest.raises(ValueError, match="tissue classes.*context"):
            gen.sample(masks[:2], seed=4)


def test_context_must_match_the_masks(tmp_path):
    masks, images = torso_pairs()
    gen = build_generator("gmm", tiny_config("gmm", tissue_classes=3))
    gen.fit(masks, images, tmp_path, seed=0)
    with pytest.raises(ValueError, match="context: expected the masks' shape"):
        gen.sample(masks[:2], seed=0, context=images[:3])
