"""The arms differ only in data: same steps, batch sizes and seeding; only the source of the samples changes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.types import DataError
from segmentation.datasets import ARMS, REAL, SYNTHETIC, make_train_stream, slice_pool
from tests.segmentation.cases import prepared_case, tiny_config


@pytest.fixture(scope="module")
def real_and_synthetic():
    real = [prepared_case(f"r{i}", "ED", seed=i) for i in range(3)]
    synthetic = [prepared_case(f"s{i}", "ED", seed=100 + i) for i in range(2)]
    for case in synthetic:  # mark synthetic images so that a yielded sample reveals where it came from
        case.image[:, 0, 0] = 1.0
    for case in real:
        case.image[:, 0, 0] = 0.0
    return real, synthetic


def _streams(real, synthetic, **overrides):
    cfg = tiny_config(**{"augment": False, "batch_size": 8, "steps": 40, **overrides})
    return {arm: make_train_stream(arm, real, synthetic, cfg, seed=3) for arm in ARMS}


def test_every_arm_gets_the_same_steps_and_batch_sizes_only_the_source_differs(real_and_synthetic):
    real, synthetic = real_and_synthetic
    streams = _streams(real, synthetic, synthetic_ratio=0.25)
    yielded = {}
    for arm, stream in streams.items():
        batches = list(stream.loader(0, stream.cfg.steps))
        assert len(batches) == 40
        assert all(b["image"].shape == (8, 1, 32, 32) and b["label"].shape == (8, 1, 32, 32) for b in batches)
        sources = torch.cat([b["source"] for b in batches])
        marks = torch.cat([b["image"][:, 0, 0, 0] for b in batches])
        assert torch.equal(marks, sources.float())  # the `source` flag tells the truth about each image
        yielded[arm] = sources.float().mean().item()
    assert yielded["real"] == 0.0
    assert yielded["synthetic"] == 1.0
    assert yielded["real+synthetic"] == pytest.approx(0.25, abs=0.05)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
def test_mixed_arm_draws_the_synthetic_ratio_in_expectation(real_and_synthetic, ratio):
    real, synthetic = real_and_synthetic
    stream = _streams(real, synthetic, synthetic_ratio=ratio)["real+synthetic"]
    per_batch = [sum(s == SYNTHETIC for s, _, _ in stream.plan(step)) for step in range(2000)]
    assert all(len(stream.plan(step)) == 8 for step in range(50))
    assert np.mean(per_batch) / 8 == pytest.approx(ratio, abs=0.01)
    # floor(r * B) or one more, never anything else: the mix is steady from batch to batch
    assert set(per_batch) <= {int(np.floor(ratio * 8)), int(np.floor(ratio * 8)) + 1}


def test_batches_are_a_pure_function_of_seed_and_step(real_and_synthetic):
    """Resuming at step k yields exactly the batches an uninterrupted stream yields from k on."""
    real, synthetic = real_and_synthetic
    cfg = tiny_config(augment=True, affine_prob=1.0, intensity_prob=1.0, steps=8)
    stream = make_train_stream("real+synthetic", real, synthetic, cfg, seed=5)
    full = list(stream.loader(0, 8))
    again = make_train_stream("real+synthetic", real, synthetic, cfg, seed=5)
    resumed = list(again.loader(5, 8))
    for a, b in zip(full[5:], resumed):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    other_seed = list(make_train_stream("real+synthetic", real, synthetic, cfg, seed=6).loader(0, 1))
    assert not torch.equal(full[0]["image"], other_seed[0]["image"])
    assert not torch.equal(full[0]["image"], full[1]["image"])


def test_worker_processes_yield_the_same_batches(real_and_synthetic):
    real, synthetic = real_and_synthetic
    cfg = tiny_config(augment=True, affine_prob=1.0, steps=3)
    in_process = list(make_train_stream("real", real, synthetic, cfg, seed=1).loader(0, 3))
    cfg.num_workers = 1
    in_worker = list(make_train_stream("real", real, synthetic, cfg, seed=1).loader(0, 3))
    for a, b in zip(in_process, in_worker):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_augmentation_moves_labels_with_the_image(real_and_synthetic):
    real, _ = real_and_synthetic
    cfg = tiny_config(augment=True, affine_prob=1.0, intensity_prob=0.0, rotate_deg=30.0, steps=4)
    stream = make_train_stream("real", real, None, cfg, seed=0)
    for batch in stream.loader(0, 4):
        labels, images = batch["label"], batch["image"]
        assert labels.dtype == torch.uint8 and set(labels.unique().tolist()) <= {0, 1, 2, 3}
        # without intensity changes each label keeps its own intensity band after the affine
        for value in (1, 2, 3):
            inside = images[labels == value]
            assert inside.numel() and (inside > 0.05).float().mean() > 0.9


def test_empty_slices_can_be_dropped_from_sampling():
    case = prepared_case("e0", "ED", seed=0)
    case.mask[0] = 0  # one empty slice
    assert slice_pool([case], drop_empty_prob=0.0).probs[0] > 0
    pool = slice_pool([case], drop_empty_prob=1.0)
    assert pool.probs[0] == 0 and pool.probs.sum() == pytest.approx(1.0)
    stream = make_train_stream("real", [case], None, tiny_config(drop_empty_prob=1.0, steps=50), seed=0)
    assert all(index != 0 for step in range(50) for _, index, _ in stream.plan(step))


def test_bad_inputs_are_named(real_and_synthetic):
    real, synthetic = real_and_synthetic
    cfg = tiny_config()
    with pytest.raises(ValueError, match="arm 'both'"):
        make_train_stream("both", real, synthetic, cfg, seed=0)
    with pytest.raises(ValueError, match="synthetic_cases"):
        make_train_stream("real+synthetic", real, None, cfg, seed=0)
    with pytest.raises(ValueError, match="real training cases"):
        make_train_stream("real", [], synthetic, cfg, seed=0)
    unlabelled = prepared_case("u0", "ED")
    unlabelled.mask = None
    with pytest.raises(DataError, match="no mask"):
        make_train_stream("real", [unlabelled], None, cfg, seed=0)
    bigger = prepared_case("b0", "ED", size=64)
    with pytest.raises(ValueError, match="same preprocessing"):
        make_train_stream("real+synthetic", real, [bigger], cfg, seed=0)


def test_real_arm_ignores_synthetic_cases_entirely(real_and_synthetic):
    real, synthetic = real_and_synthetic
    stream = make_train_stream("real", real, synthetic, tiny_config(), seed=0)
    assert set(stream.pools) == {REAL}


def test_a_linear_decay_moves_the_synthetic_share_from_the_ratio_to_zero(real_and_synthetic):
    """Share r at the first step, 0 at the last, r/2 over the run; `constant` keeps today's batches exactly."""
    real, synthetic = real_and_synthetic
    decay = _streams(real, synthetic, synthetic_ratio=0.5, steps=2001, synthetic_schedule="linear_decay")
    stream = decay["real+synthetic"]
    assert stream.synthetic_share(0) == 0.5 and stream.synthetic_share(1000) == pytest.approx(0.25)
    assert stream.synthetic_share(2000) == 0.0
    per_batch = np.array([sum(s == SYNTHETIC for s, _, _ in stream.plan(step)) for step in range(2001)]) / 8
    assert per_batch[:200].mean() == pytest.approx(0.475, abs=0.02)
    assert per_batch[-200:].mean() == pytest.approx(0.025, abs=0.02)
    assert per_batch.mean() == pytest.approx(0.25, abs=0.01)
    assert decay["real"].plan(7) == _streams(real, synthetic, synthetic_ratio=0.5, steps=2001)["real"].plan(7)
    constant = _streams(real, synthetic, synthetic_ratio=0.5, steps=2001)["real+synthetic"]
    assert constant.plan(7) == _streams(real, synthetic, synthetic_ratio=0.5, steps=2001,
                                        synthetic_schedule="constant")["real+synthetic"].plan(7)
