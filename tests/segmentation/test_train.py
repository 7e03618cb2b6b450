"""Training: it learns, it is reproducible, and a killed run resumes to exactly the same weights."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from data.config import PreprocessConfig
from segmentation.model import build_model, read_checkpoint
from segmentation.train import evaluate, train_segmenter
from tests.segmentation.cases import OracleNet, prepared_case, tiny_config


def _state(path):
    ckpt = read_checkpoint(path)
    return ckpt["model"], ckpt["optimizer"]["state"]


def _assert_same_tensors(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_same_tensors(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key


def test_a_tiny_unet_lowers_its_loss(small_cases, tmp_path):
    cfg = tiny_config(steps=24, val_every=12, augment=False, lr=2e-2)
    result = train_segmenter("real", small_cases[:6], small_cases[6:], cfg, tmp_path, seed=0, progress=False)
    metrics = pd.read_csv(result.metrics_csv)
    assert list(metrics["step"]) == list(range(1, 25))
    assert metrics["loss"].tail(4).mean() < 0.85 * metrics["loss"].head(4).mean()
    assert metrics["val_dice"].notna().sum() == 2  # steps 12 and 24
    assert result.best_val_dice == pytest.approx(metrics["val_dice"].max(), abs=1e-5)
    assert result.steps == 24 and result.samples_per_s > 0
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()


def test_same_seed_same_numbers_and_resume_gives_the_same_final_weights(small_cases, tmp_path):
    # dropout + augmentation: both the torch RNG and the data stream must be restored for this to hold
    cfg = tiny_config(steps=6, val_every=3, dropout=0.2, augment=True, affine_prob=1.0)
    train, val = small_cases[:6], small_cases[6:]
    pcfg = PreprocessConfig(target_spacing=1.5, crop_size=32)
    runs = {}
    for name in ("a", "b"):
        runs[name] = train_segmenter("real", train, val, cfg, tmp_path / name, seed=7, preprocess=pcfg,
                                     progress=False)
    interrupted = train_segmenter("real", train, val, cfg, tmp_path / "c", seed=7, preprocess=pcfg,
                                  max_steps=5, progress=False)
    assert interrupted.steps == 5 and read_checkpoint(tmp_path / "c" / "last.pt")["step"] == 3
    resumed = train_segmenter("real", train, val, cfg, tmp_path / "c", seed=7, preprocess=pcfg, progress=False)
    assert resumed.resumed_from == 3 and resumed.steps == 6

    reference = _state(tmp_path / "a" / "last.pt")
    for name in ("b", "c"):
        _assert_same_tensors(reference[0], _state(tmp_path / name / "last.pt")[0])
        _assert_same_tensors(reference[1], _state(tmp_path / name / "last.pt")[1])
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "metrics.csv"),
                                      pd.read_csv(tmp_path / name / "metrics.csv"))
    assert resumed.best_val_dice == runs["a"].best_val_dice

    other_seed = train_segmenter("real", train, val, dataclasses.replace(cfg, steps=3), tmp_path / "d", seed=8,
                                 progress=False)
    assert not torch.equal(reference[0]["model.0.conv.unit0.conv.weight"],
                           _state(other_seed.last_checkpoint)[0]["model.0.conv.unit0.conv.weight"])


def test_checkpoint_is_self_describing_and_guards_against_mixing_runs(small_cases, tmp_path):
    cfg = tiny_config(steps=2, val_every=2)
    pcfg = PreprocessConfig(target_spacing=1.5, crop_size=32)
    result = train_segmenter("real", small_cases[:2], small_cases[2:3], cfg, tmp_path, seed=1, preprocess=pcfg,
                             progress=False)
    ckpt = read_checkpoint(result.best_checkpoint)
    assert ckpt["config"] == dataclasses.asdict(cfg) and ckpt["preprocess"] == dataclasses.asdict(pcfg)
    assert ckpt["arm"] == "real" and ckpt["seed"] == 1 and ckpt["step"] == 2
    assert {"python", "numpy", "torch"} <= set(ckpt["rng"]) and ckpt["scheduler"] and ckpt["optimizer"]
    assert not list(tmp_path.glob(".*"))  # no temp files left behind by the atomic writes
    with pytest.raises(ValueError, match="another run"):
        train_segmenter("real", small_cases[:2], small_cases[2:3], dataclasses.replace(cfg, lr=0.5), tmp_path,
                        seed=1, progress=False)
    # finished run: calling again is a no-op that reports the same result
    again = train_segmenter("real", small_cases[:2], small_cases[2:3], cfg, tmp_path, seed=1, preprocess=pcfg,
                            progress=False)
    assert again.resumed_from == 2 and again.best_val_dice == result.best_val_dice


def test_validation_dice_is_one_for_a_perfect_model_and_low_for_a_random_one():
    cases = [prepared_case(f"v{i}", "ED", seed=i, label_image=True) for i in range(2)]
    perfect = evaluate(OracleNet(), cases, batch_size=3)
    assert perfect == {"RV": 1.0, "MYO": 1.0, "LV": 1.0, "mean": 1.0}
    torch.manual_seed(0)
    untrained = evaluate(build_model(tiny_config()), cases)
    assert untrained["mean"] < 0.5


def test_validation_cases_need_masks(small_cases, tmp_path):
    with pytest.raises(ValueError, match="val_cases"):
        train_segmenter("real", small_cases, [], tiny_config(), tmp_path, progress=False)


@pytest.mark.parametrize("network", ["unet", "dynunet"])
def test_networks_map_slices_to_four_logits(network):
    model = build_model(tiny_config(network=network))
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 4, 32, 32)


def test_strides_must_match_channels():
    with pytest.raises(ValueError, match="segmentation.strides"):
        build_model(tiny_config(strides=[2]))


def test_bf16_autocast_trains_where_the_cpu_supports_it(small_cases, tmp_path):
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("no bf16 support on this CPU")
    cfg = tiny_config(steps=2, val_every=2, amp="bf16", augment=False)
    result = train_segmenter("real", small_cases[:2], small_cases[2:3], cfg, tmp_path, progress=False)
    assert 0.0 <= result.best_val_dice <= 1.0
    assert pd.read_csv(result.metrics_csv)["loss"].notna().all()


def test_convergence_is_a_plateau_of_the_validation_curve():
    from segmentation.train import convergence

    rising = convergence([0.2, 0.4, 0.55, 0.7, 0.8], window=3, min_delta=0.01)
    assert not rising.converged and rising.recent_gain == pytest.approx((0.55 + 0.7 + 0.8) / 3 - 0.4)
    flat = convergence([0.2, 0.8, 0.85, 0.853, 0.851, 0.855], window=3, min_delta=0.01)
    assert flat.converged and flat.final_val_dice == 0.855 and flat.best_val_dice == 0.855
    assert not convergence([0.80, 0.81, 0.82], window=3).converged  # too few validations to show a plateau
    assert not convergence([], window=3).converged
    dipped = convergence([0.5, 0.9, 0.7, 0.75, 0.8], window=3, min_delta=0.01)  # worse than before: nothing gained
    assert dipped.converged and dipped.recent_gain < 0
    spike = convergence([0.3, 0.6, 0.80, 0.825, 0.85, 0.832, 0.834], window=3, min_delta=0.02)  # one noisy checkpoint
    assert spike.converged and spike.best_val_dice == 0.85
