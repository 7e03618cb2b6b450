"""`background: real` for the generators that condition on it (spade, cvae, pix2pix): the network gets the real
slice with the dilated heart blanked (and that region) as two more condition channels, paints the region, and
the real slice is kept outside it; the discriminator sees the blended image. (The diffusion model keeps the
background while sampling instead: test_diffusion.py.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load_config
from pipeline.errors import ConfigError
from synthesis.base import build_generator, load_generator
from synthesis.train import Batch, inpaint_channels, inpaint_region
from tests.synthesis.test_generators import tiny_config

REPO = Path(__file__).resolve().parents[2]
INPAINTERS = ["spade", "cvae", "pix2pix"]
MARGIN = 3.0


@pytest.fixture(scope="module")
def fitted(pairs, tmp_path_factory):
    masks, images = pairs
    out = {}
    for name in INPAINTERS:
        gen = build_generator(name, tiny_config(name, steps=3, background="real", inpaint_margin_px=MARGIN,
                                                blend_px=2.0))
        gen.fit(masks, images, tmp_path_factory.mktemp(name), seed=0)
        out[name] = gen
    return out


@pytest.mark.parametrize("name", INPAINTERS)
def test_the_real_slice_is_kept_outside_the_dilated_heart(fitted, pairs, name):
    masks, images = pairs
    gen = fitted[name]
    assert gen.inpaints and gen.condition_channels == 4 + 2
    assert gen.config.context_settings() == ["background"]
    context = np.clip(images[:4] + 0.05, 0, 1).astype(np.float32)
    out = gen.sample(masks[:4], seed=1, context=context)
    outside = ~inpaint_region(masks[:4], MARGIN)
    assert outside.any() and (~outside).any()
    np.testing.assert_array_equal(out[outside], context[outside])  # exactly the real slice there
    assert out.shape == masks[:4].shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    heart = masks[:4] > 0
    assert np.abs(out[heart] - context[heart]).mean() > 1e-3  # the heart is painted, not copied
    np.testing.assert_array_equal(gen.sample(masks[:4], seed=1, context=context), out)  # seeded
    with pytest.raises(ValueError, match="background 'real'.*context"):
        gen.sample(masks[:4], seed=1)
    empty = np.zeros_like(masks[:1])  # no heart: the real slice as it is
    np.testing.assert_array_equal(gen.sample(empty, seed=1, context=context[:1]), context[:1])


@pytest.mark.parametrize("name", ["spade", "cvae"])
def test_style_seeds_change_the_painted_heart(fitted, pairs, name):
    masks, images = pairs
    heart = masks[:4] > 0
    a, b = (fitted[name].sample(masks[:4], seed=s, context=images[:4]) for s in (1, 2))
    assert np.abs(a[heart] - b[heart]).mean() > 1e-4


@pytest.mark.parametrize("name", ["spade", "cvae"])
def test_the_seed_reaches_the_images_only_through_the_style_code(fitted, pairs, name, monkeypatch):
    """`style_code` is the one place a seed becomes a style (what benchmarks/encoded_styles.py swaps): with it
    fixed, two seeds give the same images; it is N(0, I), the same for the same seed."""
    masks, images = pairs
    gen = fitted[name]
    code = gen.style_code(1)
    assert code.shape == (1, gen.z_dim) and torch.equal(gen.style_code(1), code)
    monkeypatch.setattr(gen, "style_code", lambda seed: code.clone())
    np.testing.assert_array_equal(gen.sample(masks[:4], seed=1, context=images[:4]),
                                  gen.sample(masks[:4], seed=2, context=images[:4]))


@pytest.mark.parametrize("name", INPAINTERS)
def test_the_painting_reads_the_known_image(fitted, pairs, name):
    """The known image is an input: another real slice around the same heart changes the painted region."""
    masks, images = pairs
    heart = masks[:2] > 0
    a = fitted[name].sample(masks[:2], seed=1, context=images[:2])
    b = fitted[name].sample(masks[:2], seed=1, context=np.clip(images[:2] * 0.5 + 0.4, 0, 1))
    assert np.abs(a[heart] - b[heart]).mean() > 1e-5


def test_inputs_of_the_networks_and_of_the_discriminator(fitted):
    spade = fitted["spade"]
    first = next(m for m in spade.disc.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1 + 4 + 2  # the image, the heart labels, the known image and the region
    image = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    region = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    region[..., 1:3, 1:3] = True
    known, where = inpaint_channels(image, region).unbind(1)
    assert (known[region[:, 0]] == 0).all() and torch.equal(known[~region[:, 0]], image[:, 0][~region[:, 0]])
    assert torch.equal(where, region[:, 0].float())


def test_the_discriminator_sees_the_blended_image(pairs, tmp_path, monkeypatch):
    """In the GAN step the fake shown to D is the real slice outside the region: only the painting is judged."""
    masks, images = pairs
    gen = build_generator("spade", tiny_config("spade", steps=1, background="real", diffaugment=""))
    gen.fit(masks, images, tmp_path, seed=0)
    seen = []
    real_discriminate = type(gen).discriminate

    def spy(self, x, disc=None):
        seen.append(x.detach().clone())
        return real_discriminate(self, x, disc)

    monkeypatch.setattr(type(gen), "discriminate", spy)
    region, weight = gen.inpainting(masks[:2])
    image = torch.from_numpy(images[:2] * 2 - 1)[:, None]
    cond = torch.cat([torch.nn.functional.one_hot(torch.from_numpy(masks[:2]).long(), 4).permute(0, 3, 1, 2).float(),
                      inpaint_channels(image, torch.from_numpy(region)[:, None])], 1)
    batch = Batch(image=image, onehot=cond, noise=torch.Generator().manual_seed(0),
                  blend=torch.from_numpy(weight)[:, None])
    gen.train_step(batch, step=1)
    d_step = seen[0]  # real then fake, each with its condition channels
    fake = d_step[2:, 0]
    outside = torch.from_numpy(weight == 0)
    assert torch.equal(fake[outside], image[:, 0][outside])
    assert not torch.equal(fake[~outside], image[:, 0][~outside])


def test_round_trip_through_a_file(fitted, pairs, tmp_path):
    masks, images = pairs
    gen = fitted["spade"]
    again = load_generator(gen.save(tmp_path / "gen.pt"))
    assert again.config == gen.config and again.inpaints
    np.testing.assert_array_equal(again.sample(masks[:2], seed=3, context=images[:2]),
                                  gen.sample(masks[:2], seed=3, context=images[:2]))


@pytest.mark.parametrize("name", INPAINTERS)
def test_settings_are_checked(name):
    with pytest.raises(ConfigError, match=f"synthesis.{name}.background"):
        load_config(REPO / "pipeline.yaml", overrides=[f"synthesis.{name}.background=painted"])
    with pytest.raises(ConfigError, match=f"synthesis.{name}.inpaint_margin_px"):
        load_config(REPO / "pipeline.yaml", overrides=[f"synthesis.{name}.inpaint_margin_px=-1"])
    with pytest.raises(ConfigError, match=f"synthesis.{name}.(background|tissue_classes) needs the real slice"):
        load_config(REPO / "pipeline.yaml", overrides=[
            f"synthesis.{name}.background=real", f"experiment.generators=[{name}]",
            "synthesis.masks.source_mix={sampled: 1.0}"])
    cfg = load_config(REPO / "pipeline.yaml", overrides=[f"synthesis.{name}.background=real",
                                                         f"experiment.generators=[{name}]"])
    assert cfg.synthesis.generator_config(name).background == "real"
