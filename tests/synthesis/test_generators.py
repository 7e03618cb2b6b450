"""Every generator: trains, samples masks' shape in [0, 1], seeds behave, save/load round-trips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from synthesis.base import REGISTRY, build_generator, check_pair, load_generator
from synthesis.generators import SynthesisConfig
from synthesis.generators.cvae import CVAEConfig
from synthesis.generators.diffusion import DiffusionConfig
from synthesis.generators.gmm import GMMConfig
from synthesis.generators.pix2pix import Pix2PixConfig
from synthesis.generators.spade import SpadeConfig
from synthesis.diffaugment import diff_augment


SIZE = 32
GENERATORS = ("gmm", "spade", "pix2pix", "cvae", "diffusion")  # every generator that paints
LEARNED = GENERATORS[1:]
TISSUE = np.array([0.15, 0.55, 0.30, 0.80], np.float32)  # bg, RV, MYO, LV


def toy_pairs(n: int = 8, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Short-axis-like label maps (LV disc, MYO ring, RV crescent) with label-dependent intensities."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = size / 2 + rng.uniform(-2, 2, 2)
        r = size * rng.uniform(0.12, 0.18)
        d = np.hypot(yy - cy, xx - cx)
        masks[i][d < 1.5 * r] = 2
        masks[i][d < r] = 3
        masks[i][(np.hypot(yy - cy, xx - cx + 2.2 * r) < r) & (masks[i] == 0)] = 1
    images = np.clip(TISSUE[masks] + rng.normal(0, 0.03, masks.shape), 0, 1).astype(np.float32)
    return masks, images


def tiny_config(name: str, **overrides):
    loop = dict(steps=3, batch_size=4, sample_every=3, checkpoint_every=3, grid_masks=3, grid_styles=2,
                progress=False, device="cpu")
    gan = dict(d_channels=8, d_layers=2)
    cfg = {"gmm": lambda: GMMConfig(),
           "spade": lambda: SpadeConfig(channels=[8, 16], spade_hidden=8, head_channels=4, z_dim=4, **gan, **loop),
           "pix2pix": lambda: Pix2PixConfig(features=[4, 4, 8, 8, 16, 4], **gan, **loop),
           "cvae": lambda: CVAEConfig(channels=[8, 16], spade_hidden=8, head_channels=4, z_dim=4, **loop),
           "diffusion": lambda: DiffusionConfig(channels=[8, 16], spade_hidden=8, sample_steps=4, **loop)}[name]()
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def pairs():
    return toy_pairs()


@pytest.fixture(scope="module")
def trained(pairs, tmp_path_factory):
    """Each generator fitted once (a few steps) for the tests below."""
    masks, images = pairs
    out = {}
    for name in GENERATORS:
        gen = build_generator(name, tiny_config(name))
        gen.fit(masks, images, tmp_path_factory.mktemp(name), seed=0)
        out[name] = gen
    return out


def test_registry_has_all_generators():
    build_generator("gmm")  # fills the registry
    assert set(GENERATORS) <= set(REGISTRY)
    with pytest.raises(ValueError, match="unknown generator"):
        build_generator("nope")


@pytest.mark.parametrize("name", GENERATORS)
def test_sample_shape_range_and_seeds(trained, pairs, name):
    masks = pairs[0][:5]
    gen = trained[name]
    a = gen.sample(masks, seed=3)
    assert a.shape == masks.shape and a.dtype == np.float32
    assert np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, gen.sample(masks, seed=np.int64(3)))
    assert np.abs(a - gen.sample(masks, seed=4)).mean() > 1e-4, "the seed must change the style/noise"


@pytest.mark.parametrize("name", GENERATORS)
def test_save_load_round_trip(trained, pairs, tmp_path, name):
    gen = trained[name]
    path = gen.save(tmp_path / "gen.pt")
    again = load_generator(path)
    assert type(again) is type(gen) and again.config == gen.config
    np.testing.assert_array_equal(again.sample(pairs[0][:4], seed=1), gen.sample(pairs[0][:4], seed=1))
    with pytest.raises(Exception, match="holds a"):
        other = next(cls for n, cls in REGISTRY.items() if n != name)
        other.load(path)


def test_a_file_from_another_version_is_a_clear_error(trained, tmp_path):
    from data.types import DataError

    path = trained["cvae"].save(tmp_path / "gen.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["channels_old"] = payload["config"].pop("channels")
    torch.save(payload, path)
    with pytest.raises(DataError, match="does not fit the current 'cvae'"):
        load_generator(path)
    (tmp_path / "junk.pt").write_text("not torch")
    with pytest.raises(DataError, match="not a cmr-synth generator file: .*junk.pt \\(it is not a torch file\\)"):
        load_generator(tmp_path / "junk.pt")


@pytest.mark.parametrize("name", LEARNED)
def test_slices_share_one_style(trained, pairs, name):
    """One seed = one style for the whole stack: a slice's image does not depend on the other slices or on
    how the stack is chunked."""
    masks = pairs[0][:4]
    gen = trained[name]
    whole = gen.sample(masks, seed=5)
    # Images in [0, 1]: another batch size may run other convolution kernels (last-bit differences, CPU-dependent);
    # another style or slice would differ by > 1e-2.
    np.testing.assert_allclose(gen.sample(masks[2:3], seed=5)[0], whole[2], atol=1e-4)
    np.testing.assert_allclose(gen.render(masks, seed=5, chunk=1), whole, atol=1e-4)


def test_learned_sample_rejects_other_shapes(trained):
    with pytest.raises(ValueError, match="trained on 32x32"):
        trained["spade"].sample(np.zeros((1, 64, 64), np.uint8), seed=0)
    with pytest.raises(ValueError, match="labels"):
        trained["gmm"].sample(np.full((1, 32, 32), 7, np.uint8), seed=0)


def test_bad_training_pairs_are_refused(pairs):
    masks, images = pairs
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_pair(masks, images * 3)
    with pytest.raises(ValueError, match="shape"):
        check_pair(masks, images[:, :16])
    with pytest.raises(ValueError, match="divisible"):
        build_generator("spade", tiny_config("spade")).fit(masks[:, :30, :30], images[:, :30, :30], "/tmp/x", seed=0)


def test_gmm_reproduces_the_fitted_intensities(pairs, tmp_path):
    masks, images = pairs
    gen = build_generator("gmm", GMMConfig(style_scale=0.0, texture_scale=0.0, partial_volume_sigma=0.0,
                                           bias_field_coeff=0.0, noise_std=0.0))
    figures = gen.fit(masks, images, tmp_path, seed=0)
    np.testing.assert_allclose(figures["label_means"][1:], TISSUE[1:], atol=0.02)
    out = gen.sample(masks, seed=0)
    for label in (1, 2, 3):
        assert abs(out[masks == label].mean() - TISSUE[label]) < 0.02
    assert (tmp_path / "samples" / "step_000000.png").is_file()


def test_gmm_bias_field_is_shared_by_the_slices_of_a_volume(pairs, tmp_path):
    masks, images = pairs
    gen = build_generator("gmm", GMMConfig(style_scale=0.0, texture_scale=0.0, partial_volume_sigma=0.0,
                                           bias_field_coeff=0.3, noise_std=0.0))
    gen.fit(masks, images, tmp_path, seed=0)
    same = np.repeat(masks[:1], 3, axis=0)
    lv = same[0] == 3
    out = gen.sample(same, seed=2)
    np.testing.assert_allclose(out[0][lv], out[1][lv], atol=1e-6)
    assert np.std(out[0][lv]) > 1e-3  # ... and there is a field


def test_build_generator_accepts_every_config_form():
    synth = SynthesisConfig()
    synth.spade.z_dim = 7
    assert build_generator("spade", synth).config.z_dim == 7
    assert build_generator("cvae", {"z_dim": 5}).config.z_dim == 5
    with pytest.raises(ValueError, match="unknown key"):
        build_generator("cvae", {"zdim": 5})
    with pytest.raises(TypeError):
        build_generator("cvae", SpadeConfig())
    assert synth.size_divisor("spade") == 16 and synth.size_divisor("pix2pix") == 16


def test_diffaugment_applies_the_same_transform_to_paired_batches():
    torch.manual_seed(0)
    x = torch.rand(6, 5, 16, 16)
    a, b = diff_augment([x, x.clone()], ["color", "translation", "cutout"])
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, x)
    (c,) = diff_augment([x], ["color"])
    torch.testing.assert_close(c[:, 1:], x[:, 1:])  # intensity ops leave the mask channels alone
    with pytest.raises(ValueError, match="unknown op"):
        diff_augment([x], ["rotate"])
