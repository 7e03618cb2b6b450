"""The mode-seeking term of `spade` (lambda_ms): a second style code per mask in the same generator call, and
1 / (image difference / code difference) minimised so that style codes change the image."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from synthesis.base import build_generator
from synthesis.generators.spade import mode_seeking
from tests.synthesis.test_generators import tiny_config, toy_pairs


def test_the_term_is_the_inverse_ratio_of_image_to_code_differences():
    fake, other = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    z, z2 = torch.zeros(2, 3), torch.full((2, 3), 2.0)
    assert mode_seeking(fake, other, z, z2).item() == pytest.approx(1 / (0.5 / 2.0 + 1e-5), rel=1e-6)
    weight = torch.zeros(2, 1, 4, 4)
    weight[..., :2, :] = 1.0
    other[..., 2:, :] = 7.0  # outside the weighted region: ignored
    assert mode_seeking(fake, other, z, z2, weight).item() == pytest.approx(1 / (0.5 / 2.0 + 1e-5), rel=1e-6)
    weight[1] = 0.0  # the second sample has nothing to paint: it adds 0 to the mean over samples
    assert mode_seeking(fake, other, z, z2, weight).item() == pytest.approx(0.5 / (0.5 / 2.0 + 1e-5), rel=1e-6)


@pytest.mark.parametrize("is_vae", [True, False])
def test_training_with_it_logs_the_term_and_keeps_the_step_shape(tmp_path, is_vae):
    masks, images = toy_pairs(n=6)
    gen = build_generator("spade", tiny_config("spade", steps=2, lambda_ms=1.0, is_vae=is_vae, background="real"))
    figures = gen.fit(masks, images, tmp_path, seed=0)
    assert "ms" in figures["final_losses"] and np.isfinite(figures["final_losses"]["ms"])
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert len(rows) == 2 and all(float(r["ms"]) > 0 for r in rows)
    heart = masks[:3] > 0
    a, b = (gen.sample(masks[:3], seed=s, context=images[:3]) for s in (0, 1))
    assert np.abs(a[heart] - b[heart]).mean() > 0  # two style seeds, two paintings


def test_off_by_default_and_the_step_is_unchanged(tmp_path):
    """lambda_ms = 0 adds nothing: the losses of a step are those without the term's code path."""
    masks, images = toy_pairs(n=6)
    gen = build_generator("spade", tiny_config("spade", steps=1))
    assert gen.config.lambda_ms == 0.0
    figures = gen.fit(masks, images, tmp_path, seed=0)
    assert "ms" not in figures["final_losses"] and set(figures["final_losses"]) >= {"kl", "l1", "g_adv"}
