"""The shared training loop: exact resume, EMA, grids, metrics, and the divergence guards."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from synthesis.base import build_generator
from synthesis.train import TrainingDiverged
from tests.synthesis.test_generators import tiny_config


def spade(**overrides):
    # every optional part of the GAN step on: VAE, feature matching, DiffAugment, lazy R1
    cfg = tiny_config("spade", diffaugment="color,translation,cutout", r1_gamma=1.0, r1_every=2, **overrides)
    return build_generator("spade", cfg)


def weights(gen) -> dict[str, torch.Tensor]:
    return {f"{part}.{k}": v for part, state in gen.state_dict().items() if not part.startswith("opt")
            for k, v in state.items()}


def test_resume_gives_the_weights_of_an_uninterrupted_run(pairs, tmp_path, monkeypatch):
    masks, images = pairs
    straight = spade(steps=5, checkpoint_every=2)
    straight.fit(masks, images, tmp_path / "a", seed=1)

    interrupted = spade(steps=5, checkpoint_every=2)
    real_step = type(interrupted).train_step

    def crash_at_3(self, batch, step):
        if step == 3:
            raise KeyboardInterrupt  # killed after the checkpoint of step 2 and one more logged step
        return real_step(self, batch, step)

    monkeypatch.setattr(type(interrupted), "train_step", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(masks, images, tmp_path / "b", seed=1)
    monkeypatch.undo()
    resumed = spade(steps=5, checkpoint_every=2)
    figures = resumed.fit(masks, images, tmp_path / "b", seed=1)

    assert figures["resumed_from"] == 2
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    with open(tmp_path / "b" / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps == [0, 1, 2, 3, 4]


def test_resume_refuses_a_different_run(pairs, tmp_path):
    masks, images = pairs
    spade(steps=2).fit(masks, images, tmp_path, seed=0)
    with pytest.raises(ValueError, match="seed 0 != 1"):
        spade(steps=2).fit(masks, images, tmp_path, seed=1)
    with pytest.raises(ValueError, match="lambda_fm"):
        spade(steps=2, lambda_fm=3.0).fit(masks, images, tmp_path, seed=0)
    with pytest.raises(ValueError, match="different training slices"):
        spade(steps=2).fit(masks, images[::-1].copy(), tmp_path, seed=0)
    assert spade(steps=3).fit(masks, images, tmp_path, seed=0)["resumed_from"] == 2  # longer is fine


def test_ema_differs_from_the_raw_weights_and_is_what_samples(pairs, tmp_path):
    masks, images = pairs
    gen = build_generator("cvae", tiny_config("cvae", steps=4))
    gen.fit(masks, images, tmp_path, seed=0)
    raw, ema = gen.net.state_dict(), gen.ema.module.state_dict()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    with_ema, with_raw = gen.sample(masks, seed=0), gen.sample(masks, seed=0, use_ema=False)
    assert np.abs(with_ema - with_raw).max() > 1e-4
    gen.ema.module.load_state_dict(raw)
    np.testing.assert_array_equal(gen.sample(masks, seed=0), with_raw)


def test_outputs_grids_checkpoint_and_metrics(pairs, tmp_path):
    import matplotlib.image

    masks, images = pairs
    gen = build_generator("pix2pix", tiny_config("pix2pix", steps=4, sample_every=2))
    figures = gen.fit(masks, images, tmp_path, seed=0)
    grids = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert grids == ["step_000002.png", "step_000004.png"]
    assert matplotlib.image.imread(tmp_path / "samples" / grids[-1]).ndim == 3
    assert (tmp_path / "checkpoint.pt").is_file()
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert {"d_loss", "g_adv", "l1"} <= rows[0].keys()
    assert set(figures["final_losses"]) >= {"d_loss", "g_adv", "l1"} and figures["steps"] == 4


def test_nan_loss_stops_training(pairs, tmp_path, monkeypatch):
    masks, images = pairs
    gen = build_generator("cvae", tiny_config("cvae", steps=6, checkpoint_every=1))
    real_step = type(gen).train_step

    def poisoned_at_step_2(self, batch, step):
        if step == 2:
            with torch.no_grad():
                next(self.net.parameters()).fill_(float("nan"))
        return real_step(self, batch, step)

    monkeypatch.setattr(type(gen), "train_step", poisoned_at_step_2)
    with pytest.raises(TrainingDiverged, match="non-finite") as info:
        gen.fit(masks, images, tmp_path, seed=0)
    assert info.value.step == 2 and not np.isfinite(info.value.losses["loss"])
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # the last good state is kept
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"]["net"].values())


def test_collapse_guard_fires_when_the_discriminator_wins(pairs, tmp_path, monkeypatch):
    masks, images = pairs
    gen = spade(steps=20, collapse_patience=4)
    calls = []

    def d_wins_from_step_3(self, batch, step):
        calls.append(step)
        won = step >= 3
        return {"d_loss": 0.0 if won else 1.5, "g_adv": 3.0 if won else 0.2}

    monkeypatch.setattr(type(gen), "train_step", d_wins_from_step_3)
    with pytest.raises(TrainingDiverged, match="discriminator has won") as info:
        gen.fit(masks, images, tmp_path, seed=0)
    assert info.value.step == 6 and calls[-1] == 6


def test_collapse_guard_needs_consecutive_steps(pairs, tmp_path, monkeypatch):
    masks, images = pairs
    gen = spade(steps=8, collapse_patience=2, sample_every=100)
    monkeypatch.setattr(type(gen), "train_step",
                        lambda self, batch, step: {"d_loss": 0.0 if step % 2 else 1.0, "g_adv": 2.0})
    assert gen.fit(masks, images, tmp_path, seed=0)["steps"] == 8


def test_bf16_autocast_trains(pairs, tmp_path):
    masks, images = pairs
    gen = build_generator("spade", tiny_config("spade", steps=2, amp="bf16"))
    losses = gen.fit(masks, images, tmp_path, seed=0)["final_losses"]
    assert all(np.isfinite(v) for v in losses.values())
    assert gen.sample(masks[:2], seed=0).dtype == np.float32
