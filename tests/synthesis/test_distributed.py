"""Distributed generator training: 2 processes (torchrun, Gloo on CPU) train the GANs and the cVAE like 1 process
with the same global batch, resume exactly, and only rank 0 writes.

The worker is this module (`python -m tests.synthesis.test_distributed WORKDIR` under torchrun, see
tests/segmentation/test_distributed.py for the launcher and the write recorder).

What must match and how closely:
- With DiffAugment off, every random draw of a step is per sample and world-size invariant (batch indices
  from (seed, step); style codes, reparameterisation noise and pix2pix dropout masks drawn for the whole
  global batch and sliced), and DDP's average of the two half-batch gradients equals the full-batch
  gradient of these per-sample-mean losses: only the summation order differs (~1e-7 relative). The logged
  losses and the weights must agree to 1e-4. Biases directly followed by instance norm have a zero true
  gradient, so Adam turns their rounding noise into lr-sized steps: they are compared through the
  generator's output instead (see the segmentation test).
- With DiffAugment on, each rank draws the augmentation of its own share from its own stream: equality with
  one process is impossible by design (the draws are for a different number of samples), so that run is only
  checked to train, agree across ranks and stay finite.
- Resuming under DDP from a checkpoint is exact (same losses and weights bit for bit).
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.segmentation.test_distributed import launch_torchrun, rank_reports, require_gloo, run_worker

SEED = 1
EXACT = {  # generator -> overrides; every optional part of the GAN step on except DiffAugment
    "spade": dict(diffaugment="", r1_gamma=1.0, r1_every=2, lambda_fm=1.0, lambda_ms=1.0),
    "pix2pix": dict(diffaugment="", dropout=0.5),
    "cvae": dict(),
    "diffusion": dict(),
}


def build(name: str, **overrides):
    from synthesis.base import build_generator
    from tests.synthesis.test_generators import tiny_config

    return build_generator(name, tiny_config(name, **{"steps": 3, "batch_size": 4, **overrides}))


def pairs():
    from tests.synthesis.test_generators import toy_pairs

    return toy_pairs(n=6)


def fit_all(workdir: Path) -> dict[str, Any]:
    masks, images = pairs()
    figures = {}
    for name, overrides in EXACT.items():
        figures[name] = build(name, **overrides).fit(masks, images, workdir / name, seed=SEED)
    figures["spade_aug"] = build("spade", diffaugment="color,translation,cutout").fit(
        masks, images, workdir / "spade_aug", seed=SEED)
    build("spade", **{**EXACT["spade"], "steps": 2}).fit(masks, images, workdir / "spade_resumed", seed=SEED)
    figures["spade_resumed"] = build("spade", **EXACT["spade"]).fit(masks, images, workdir / "spade_resumed",
                                                                     seed=SEED)
    return figures


def worker(workdir: Path) -> None:
    run_worker(workdir, fit_all, watched=(*EXACT, "spade_aug", "spade_resumed"))


# -------------------------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    require_gloo()
    workdir = tmp_path_factory.mktemp("gan-ddp")
    launch_torchrun("tests.synthesis.test_distributed", workdir)
    return workdir


def losses(path: Path) -> dict[str, np.ndarray]:
    with open(path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0] if k != "seconds"}


def checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path / "checkpoint.pt", weights_only=True)["model"]


def restored(name: str, path: Path):
    gen = build(name, **EXACT[name])
    masks, _ = pairs()
    gen.build(masks.shape[1:], training=False)
    gen.net.load_state_dict(checkpoint(path)["net"])
    return gen


@pytest.mark.parametrize("name", list(EXACT))
def test_two_processes_train_like_one_process_with_the_same_global_batch(two_process_run, tmp_path, name):
    masks, images = pairs()
    build(name, **EXACT[name]).fit(masks, images, tmp_path, seed=SEED)
    one, two = losses(tmp_path), losses(two_process_run / name)
    assert one.keys() == two.keys()
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-4, err_msg=key)
    a, b = checkpoint(tmp_path), checkpoint(two_process_run / name)
    for part in ("net", "disc") if "disc" in a else ("net",):
        for key in (k for k in a[part] if not k.endswith("bias")):
            torch.testing.assert_close(b[part][key], a[part][key], rtol=1e-4, atol=1e-4, msg=f"{part}.{key}")
    ref, ddp = restored(name, tmp_path), restored(name, two_process_run / name)
    np.testing.assert_allclose(ddp.sample(masks, seed=0, use_ema=False), ref.sample(masks, seed=0, use_ema=False),
                               atol=1e-4)


def test_diffaugment_trains_under_ddp_and_every_rank_reports_the_same(two_process_run):
    reports = rank_reports(two_process_run)
    for name in (*EXACT, "spade_aug", "spade_resumed"):
        assert reports[0][name] == reports[1][name], name
        assert reports[0][name]["processes"] == 2
    aug = losses(two_process_run / "spade_aug")
    assert list(aug["step"]) == [0, 1, 2] and all(np.isfinite(v).all() for v in aug.values())


def test_resume_under_ddp_is_exact(two_process_run):
    assert rank_reports(two_process_run)[0]["spade_resumed"]["resumed_from"] == 2
    straight, resumed = checkpoint(two_process_run / "spade"), checkpoint(two_process_run / "spade_resumed")
    for part in ("net", "ema", "disc"):
        for key in straight[part]:
            assert torch.equal(straight[part][key], resumed[part][key]), f"{part}.{key}"
    a, b = losses(two_process_run / "spade"), losses(two_process_run / "spade_resumed")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_only_rank_0_writes(two_process_run):
    rank0, rank1 = (r["writes"] for r in rank_reports(two_process_run))
    assert rank1 == []
    assert any("checkpoint.pt" in w for w in rank0) and any(".png" in w for w in rank0)  # the recorder works
    assert sorted(p.name for p in (two_process_run / "spade").iterdir()) == ["checkpoint.pt", "metrics.csv",
                                                                              "samples"]


def test_batch_size_must_split_evenly_and_fp16_needs_cuda(tmp_path):
    from segmentation.runtime import DistributedContext
    from synthesis.train import fit_loop

    masks, images = pairs()
    gen = build("cvae", batch_size=3)
    gen.build(masks.shape[1:], training=True)
    with pytest.raises(ValueError, match=r"synthesis.cvae.batch_size = 3 must be divisible .* \(2\)"):
        fit_loop(gen, masks, images, tmp_path, seed=0, dist=DistributedContext(rank=0, world_size=2))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="synthesis.spade.amp = 'fp16' needs a CUDA device"):
            build("spade", amp="fp16").fit(masks, images, tmp_path / "fp16", seed=0)


def test_compile_failure_falls_back_to_eager_with_a_warning(broken_compile, tmp_path):
    masks, images = pairs()
    with pytest.warns(UserWarning, match="torch.compile failed") as caught:
        figures = build("spade", compile=True, steps=2).fit(masks, images, tmp_path, seed=0)
    messages = sorted(str(w.message) for w in caught if "torch.compile" in str(w.message))
    assert [m.split(":")[0] for m in messages] == ["spade discriminator", "spade generator"]
    assert all("no compiler here" in m and m.endswith("training without it") for m in messages)
    assert all(np.isfinite(v) for v in figures["final_losses"].values())


def test_channels_last_trains_the_same_network(tmp_path):
    masks, images = pairs()
    plain = build("spade", **EXACT["spade"], steps=2)
    plain.fit(masks, images, tmp_path / "a", seed=0)
    last = build("spade", **EXACT["spade"], steps=2, channels_last=True)
    last.fit(masks, images, tmp_path / "b", seed=0)
    np.testing.assert_allclose(last.sample(masks, seed=0, use_ema=False), plain.sample(masks, seed=0, use_ema=False),
                               atol=1e-4)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
