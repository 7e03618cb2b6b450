"""`crop_px`: learned generators in the background-preserving mode trained and sampled on heart-centred windows
(issue 16: cheaper on a CPU). The painted window is pasted back into the real slice: outside the dilated heart
nothing changes, a slice without heart is its real slice, and the window's outer pixels stay real so that the
painting fades in before the edge where it is pasted."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from synthesis.base import build_generator, load_generator
from synthesis.train import heart_windows, inpaint_region
from tests.synthesis.test_generators import tiny_config, toy_pairs

REPO = Path(__file__).resolve().parents[2]
SIDE, MARGIN = 24, 2.0
WINDOWED = ["spade", "diffusion"]  # one generator that inpaints by conditioning, the one that does it by RePaint


def off_centre_pairs() -> tuple[np.ndarray, np.ndarray]:
    """Toy 32-px hearts placed in the top-right corner of 48 x 48 slices (so windows must be moved inside the
    slice), plus one slice without heart."""
    masks, images = toy_pairs(n=6, size=32)
    masks = np.pad(masks, ((0, 0), (0, 16), (16, 0)))
    images = np.pad(images, ((0, 0), (0, 16), (16, 0)), constant_values=0.3)
    masks[-1] = 0
    return masks, images


def test_windows_are_centred_on_the_heart_and_kept_inside_the_slice():
    masks = np.zeros((3, 40, 48), np.uint8)
    masks[0, 10:20, 30:40] = 2  # bounding box rows 10..19, cols 30..39: centre (15, 35)
    masks[1, 0:4, 44:48] = 1  # in the corner: the window is moved inside
    np.testing.assert_array_equal(heart_windows(masks, 16), [[15 - 8, 35 - 8], [0, 48 - 16], [-1, -1]])
    np.testing.assert_array_equal(heart_windows(masks, 40), [[0, 35 - 20 - 7], [0, 8], [-1, -1]])  # at most 48 - 40
    with pytest.raises(ValueError, match="crop_px = 41 is larger than the 40x48 slices"):
        heart_windows(masks, 41)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    masks, images = off_centre_pairs()
    out = {}
    for name in WINDOWED:
        gen = build_generator(name, tiny_config(name, background="real", crop_px=SIDE, inpaint_margin_px=MARGIN,
                                                blend_px=2.0))
        gen.fit(masks, images, tmp_path_factory.mktemp(name), seed=0)
        out[name] = gen
    return out


@pytest.mark.parametrize("name", WINDOWED)
def test_the_window_is_painted_and_pasted_back_into_the_real_slice(fitted, name):
    masks, images = off_centre_pairs()
    gen = fitted[name]
    assert gen.image_shape == (SIDE, SIDE)  # the networks see windows, not slices
    context = np.clip(images + 0.05, 0, 1).astype(np.float32)
    out = gen.sample(masks, seed=1, context=context)
    assert out.shape == masks.shape and out.dtype == np.float32
    outside = ~inpaint_region(masks, MARGIN)
    np.testing.assert_array_equal(out[outside], context[outside])  # exactly the real slice there
    np.testing.assert_array_equal(out[-1], context[-1])  # no heart: the real slice
    heart = masks > 0
    assert np.abs(out[heart] - context[heart]).mean() > 1e-3  # the heart is painted
    corners = heart_windows(masks, SIDE)
    for i, (y, x) in enumerate(corners[:-1]):
        window = np.zeros(masks.shape[1:], bool)
        window[y + 1:y + SIDE - 1, x + 1:x + SIDE - 1] = True  # the window less its outer ring
        np.testing.assert_array_equal(out[i][~window], context[i][~window])
    np.testing.assert_array_equal(gen.sample(masks, seed=1, context=context), out)  # seeded
    with pytest.raises(ValueError, match="background 'real'.*context"):
        gen.sample(masks, seed=1)


def test_windows_free_the_generator_from_the_slice_size(fitted, tmp_path):
    """Trained on 48-px slices, a windowed generator paints hearts in slices of another size, also after a
    round trip through its file."""
    masks, images = off_centre_pairs()
    gen = fitted["spade"]
    again = load_generator(gen.save(tmp_path / "gen.pt"))
    assert again.config.crop_px == SIDE
    small, context = masks[:2, 8:, :40], images[:2, 8:, :40]  # 40 x 40 slices
    np.testing.assert_array_equal(again.sample(small, seed=2, context=context),
                                  gen.sample(small, seed=2, context=context))
    with pytest.raises(ValueError, match="crop_px = 24 is larger than the 16x16 slices"):
        gen.sample(masks[:1, :16, -16:], seed=0, context=images[:1, :16, -16:])


def test_training_needs_a_heart_to_centre_on(tmp_path):
    masks, images = off_centre_pairs()
    gen = build_generator("spade", tiny_config("spade", background="real", crop_px=SIDE))
    with pytest.raises(ValueError, match="no training slice holds one"):
        gen.fit(np.zeros_like(masks), images, tmp_path, seed=0)


def test_settings_are_checked():
    base = ["experiment.generators=[diffusion]", "synthesis.diffusion.background=real"]
    with pytest.raises(ConfigError, match=r"synthesis.diffusion.crop_px = 96 .*needs synthesis.diffusion.background"):
        load_config(REPO / "pipeline.yaml", overrides=[base[0], "synthesis.diffusion.crop_px=96"])
    with pytest.raises(ConfigError, match=r"crop_px = 256 is larger than the slices"):
        load_config(REPO / "pipeline.yaml", overrides=[*base, "synthesis.diffusion.crop_px=256"])
    with pytest.raises(ConfigError, match=r"crop_px = 60 must be divisible by 8"):
        load_config(REPO / "pipeline.yaml", overrides=[*base, "synthesis.diffusion.crop_px=60"])
    with pytest.raises(ConfigError, match="synthesis.spade.crop_px"):
        load_config(REPO / "pipeline.yaml", overrides=["synthesis.spade.crop_px=-1"])
    cfg = load_config(REPO / "pipeline.yaml", overrides=[*base, "synthesis.diffusion.crop_px=48"])
    assert cfg.synthesis.diffusion.crop_px == 48
