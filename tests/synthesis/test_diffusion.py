"""`diffusion`: built from its config section, trained by the shared loop (exact resume), seeded DDIM sampling,
and the background-preserving mode that keeps the real slice outside the dilated heart.

The shared properties (shape and range, seeds, save/load, one style per stack, tissue classes, DDP) are checked
with the other generators in test_generators.py, test_tissue.py and test_distributed.py."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import SPADEDiffusionModelUNet
from scipy import ndimage

from pipeline.config import load_config
from pipeline.errors import ConfigError
from synthesis.base import build_generator, load_generator
from synthesis.generators import SynthesisConfig
from synthesis.generators.diffusion import DiffusionConfig
from synthesis.train import blend_weight, inpaint_region
from tests.synthesis.test_generators import tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fitted(pairs, tmp_path_factory):
    masks, images = pairs
    gen = build_generator("diffusion", tiny_config("diffusion", steps=4))
    gen.fit(masks, images, tmp_path_factory.mktemp("diffusion"), seed=0)
    return gen


def with_settings(gen, **settings):
    """The fitted generator's weights under other sampling settings (sampling only: no retraining)."""
    again = build_generator("diffusion", tiny_config("diffusion", steps=4, **settings))
    again.restore(gen.state())
    return again


def weights(gen) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v for part, state in gen.state_dict().items() if not part.startswith("opt")
            for k, v in state.items()}


def test_built_from_its_config_section():
    synth = SynthesisConfig()
    gen = build_generator("diffusion", synth)
    assert isinstance(gen.config, DiffusionConfig) and gen.learned
    assert synth.size_divisor("diffusion") == 2 ** (len(gen.config.channels) - 1) == 8
    assert gen.config.sample_steps == 50 and gen.config.background == "generated"
    assert gen.config.prediction_type == gen.scheduler.prediction_type == "v_prediction"
    assert gen.scheduler.num_train_timesteps == 1000
    gen.build((32, 32), training=False)
    assert isinstance(gen.net, SPADEDiffusionModelUNet) and gen.net.label_nc == 4
    tissue = build_generator("diffusion", {"tissue_classes": 3, "channels": [8, 16]})
    assert tissue.config.context_settings() == ["tissue_classes"]


def test_settings_are_checked_and_the_full_profile_loads():
    with pytest.raises(ConfigError, match="synthesis.diffusion.sample_steps"):
        load_config(REPO / "pipeline.yaml", overrides=["synthesis.diffusion.sample_steps=51"])
    with pytest.raises(ConfigError, match="synthesis.diffusion.background"):
        load_config(REPO / "pipeline.yaml", overrides=["synthesis.diffusion.background=painted"])
    full = load_config(REPO / "pipeline.yaml", profile="full").synthesis.diffusion
    assert full.amp == "bf16" and full.channels_last and 160 % SynthesisConfig(diffusion=full).size_divisor("diffusion") == 0
    # masks sampled from the shape model have no real slice behind them
    with pytest.raises(ConfigError, match="synthesis.diffusion.background needs the real slice"):
        load_config(REPO / "pipeline.yaml", overrides=[
            "synthesis.diffusion.background=real", "experiment.generators=[diffusion]",
            "synthesis.masks.source_mix={sampled: 1.0}"])


def test_training_logs_one_finite_loss_and_epsilon_prediction_trains(pairs, tmp_path):
    masks, images = pairs
    figures = build_generator("diffusion", tiny_config("diffusion", prediction_type="epsilon", schedule="cosine",
                                                       sample_steps=2)).fit(masks, images, tmp_path, seed=0)
    assert figures["steps"] == 3 and np.isfinite(figures["final_losses"]["loss"])
    with open(tmp_path / "metrics.csv") as f:
        assert list(csv.DictReader(f).fieldnames) == ["step", "seconds", "loss"]
    assert (tmp_path / "samples" / "step_000003.png").is_file()


def test_resume_gives_the_weights_of_an_uninterrupted_run(pairs, tmp_path, monkeypatch):
    masks, images = pairs
    straight = build_generator("diffusion", tiny_config("diffusion", steps=5, checkpoint_every=2))
    straight.fit(masks, images, tmp_path / "a", seed=1)
    interrupted = build_generator("diffusion", tiny_config("diffusion", steps=5, checkpoint_every=2))
    real_step = type(interrupted).train_step

    def crash_at_3(self, batch, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_step(self, batch, step)

    monkeypatch.setattr(type(interrupted), "train_step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(masks, images, tmp_path / "b", seed=1)
    monkeypatch.undo()
    resumed = build_generator("diffusion", tiny_config("diffusion", steps=5, checkpoint_every=2))
    assert resumed.fit(masks, images, tmp_path / "b", seed=1)["resumed_from"] == 2
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    np.testing.assert_array_equal(resumed.sample(masks[:2], seed=0), straight.sample(masks[:2], seed=0))


def test_sampling_takes_the_configured_ddim_steps(fitted, pairs, monkeypatch):
    calls = []
    net = fitted.ema.module
    real_forward = type(net).forward
    monkeypatch.setattr(type(net), "forward", lambda self, *a, **k: calls.append(1) or real_forward(self, *a, **k))
    fitted.sample(pairs[0][:2], seed=0)
    assert len(calls) == fitted.config.sample_steps == 4


def test_region_and_blend_weight():
    masks = np.zeros((2, 20, 20), np.uint8)
    masks[0, 8:12, 8:12] = 3
    region = inpaint_region(masks, 2.0)
    assert region[0].sum() > 16 and not region[1].any()  # a slice without heart: nothing to sample
    np.testing.assert_array_equal(region[0], ndimage.distance_transform_edt(masks[0] == 0) <= 2.0)
    weight = blend_weight(region, 2.0)
    assert (weight[~region] == 0).all() and (weight[masks > 0] == 1).all()
    assert ((weight > 0) & (weight < 1)).any()  # the ramp inside the region's edge
    np.testing.assert_array_equal(blend_weight(region, 0.0), region.astype(np.float32))
    tissue_map = np.where(masks == 0, 5, masks)  # tissue classes (>= 4) are not heart
    np.testing.assert_array_equal(inpaint_region(tissue_map, 2.0), region)


def test_real_background_keeps_the_slice_outside_the_dilated_heart(fitted, pairs):
    masks, images = pairs
    gen = with_settings(fitted, background="real", inpaint_margin_px=3.0, blend_px=2.0)
    assert gen.config.context_settings() == ["background"] and fitted.config.context_settings() == []
    context = np.clip(images + 0.05, 0, 1).astype(np.float32)
    out = gen.sample(masks[:4], seed=1, context=context[:4])
    outside = ~inpaint_region(masks[:4], 3.0)
    assert outside.any() and (~outside).any()
    np.testing.assert_array_equal(out[outside], context[:4][outside])  # exactly the real slice there
    assert out.shape == masks[:4].shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    heart = masks[:4] > 0
    assert np.abs(out[heart] - context[:4][heart]).mean() > 1e-3  # the heart is sampled, not copied
    np.testing.assert_array_equal(gen.sample(masks[:4], seed=1, context=context[:4]), out)  # seeded
    assert np.abs(gen.sample(masks[:4], seed=2, context=context[:4])[heart] - out[heart]).mean() > 1e-4
    with pytest.raises(ValueError, match="background 'real'.*context"):
        gen.sample(masks[:4], seed=1)
    empty = np.zeros_like(masks[:1])  # no heart: the real slice as it is
    np.testing.assert_array_equal(gen.sample(empty, seed=1, context=context[:1]), context[:1])


def test_real_background_with_nothing_known_is_the_generated_sample(fitted, pairs):
    """The RePaint loop is DiffusionInferer.sample's loop plus the replacement: with a region covering every
    pixel it gives the generated mode's images exactly."""
    masks, images = pairs
    everywhere = with_settings(fitted, background="real", inpaint_margin_px=64.0)
    np.testing.assert_array_equal(everywhere.sample(masks[:3], seed=5, context=images[:3]),
                                  fitted.sample(masks[:3], seed=5))


def test_real_background_round_trips_through_a_file(fitted, pairs, tmp_path):
    masks, images = pairs
    gen = with_settings(fitted, background="real")
    again = load_generator(gen.save(tmp_path / "gen.pt"))
    assert again.config == gen.config
    np.testing.assert_array_equal(again.sample(masks[:2], seed=3, context=images[:2]),
                                  gen.sample(masks[:2], seed=3, context=images[:2]))
