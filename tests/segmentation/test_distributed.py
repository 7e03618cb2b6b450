"""Distributed segmenter training: 2 processes (torchrun, Gloo on CPU) train like 1 process with the same global
batch, resume exactly, and only rank 0 writes.

The 2-process run is `python -m torch.distributed.run --standalone --nproc_per_node=2 -m
tests.segmentation.test_distributed WORKDIR`: this module is also the worker (`worker()` below). Each rank
records every write it attempts under the run folders (a Python audit hook sees every open for writing,
mkdir, rename and remove, including those of torch.save's atomic renames and of tempfile) and reports it,
with its TrainResults, in a JSON file outside those folders.

Tolerance: the two processes compute the same arithmetic as one process except that the gradient is the
average of two half-batch means instead of one full-batch mean (and the loss logged is the mean of two
means): a different summation order, ~1e-7 relative in float32. Over a few Adam steps the weights stay
within ~1e-6; the comparisons allow 1e-4 (weights, network outputs, loss, Dice). Conv biases directly
followed by instance norm are the exception: their true gradient is zero (the norm removes any constant),
so what they receive is rounding noise, which Adam normalises into lr-sized steps. They differ between any
two runs of different summation order and have no effect on the output, so they are checked through the
network's outputs rather than one by one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
WORLD_SIZE = 2
SEED = 3


# --------------------------------------------------------------------------- helpers shared with synthesis
def require_gloo() -> None:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the Gloo backend is not available in this torch build")


def launch_torchrun(module: str, workdir: Path, nproc: int = WORLD_SIZE, timeout: float = 240) -> None:
    """Run `python -m <module> <workdir>` under torchrun with `nproc` CPU processes (Gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, str(workdir)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise AssertionError(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")


def record_writes(roots: Sequence[Path]) -> list[str]:
    """Start recording (for the rest of the process) every file-system write under `roots`; returns the list
    that fills up. Writes through C code that bypasses Python's audit events (torch.save's own file writer)
    still show up through the temp file and rename of the atomic writes around them."""
    roots = [str(Path(r).resolve()) for r in roots]
    events: list[str] = []
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def under(path: Any) -> bool:
        try:
            p = os.path.abspath(os.fsdecode(path))
        except TypeError:  # a file descriptor
            return False
        return any(p == r or p.startswith(r + os.sep) for r in roots)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            wants_write = any(c in str(mode) for c in "wax+") if mode is not None else bool((flags or 0) & writing)
            if wants_write and under(path):
                events.append(f"open({path}, {mode or flags})")
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate") and under(args[0]):
            events.append(f"{event}({args[0]})")
        elif event == "os.rename" and (under(args[0]) or under(args[1])):
            events.append(f"{event}({args[0]} -> {args[1]})")

    sys.addaudithook(hook)
    return events


def rank_reports(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads((workdir / "ranks" / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]


def write_rank_report(workdir: Path, rank: int, report: dict[str, Any]) -> None:
    (workdir / "ranks").mkdir(parents=True, exist_ok=True)
    (workdir / "ranks" / f"rank{rank}.json").write_text(json.dumps(report, default=str))


def run_worker(workdir: Path, work: Callable[[Path], dict[str, Any]], watched: Sequence[str]) -> None:
    """Body of a torchrun worker: record writes under workdir/<watched>, run `work`, write the rank's report."""
    from segmentation.runtime import init_distributed, shutdown_distributed

    ctx = init_distributed("cpu")
    assert ctx.world_size == WORLD_SIZE, ctx
    torch.set_num_threads(1)
    writes = record_writes([workdir / name for name in watched])
    try:
        report = work(workdir)
    finally:
        shutdown_distributed()
    write_rank_report(workdir, ctx.rank, {**report, "writes": list(writes)})


# ------------------------------------------------------------------------------------------- the worker
def cases():
    from tests.segmentation.cases import prepared_case

    all_cases = [prepared_case(f"p{i}", phase, seed=2 * i + (phase == "ES"), lv_radius=4.5 if phase == "ED" else 3.5)
                 for i in range(3) for phase in ("ED", "ES")]
    return all_cases[:4], all_cases[4:]


def config():
    from tests.segmentation.cases import tiny_config

    # augmentation on (per-sample seeds must survive the split); batch 4 = 2 per process
    return tiny_config(steps=6, val_every=3, batch_size=4, augment=True, affine_prob=1.0, intensity_prob=0.5)


def train_runs(workdir: Path) -> dict[str, Any]:
    """An uninterrupted run, a run killed after step 4 (checkpoint at 3) then resumed, and one run per rank
    in a single-process context (how sweep units are spread over GPUs: no collective at all)."""
    from segmentation.runtime import DistributedContext, init_distributed
    from segmentation.train import train_segmenter

    train, val = cases()
    cfg = config()
    full = train_segmenter("real", train, val, cfg, workdir / "full", seed=SEED, progress=False)
    killed = train_segmenter("real", train, val, cfg, workdir / "resumed", seed=SEED, max_steps=4, progress=False)
    resumed = train_segmenter("real", train, val, cfg, workdir / "resumed", seed=SEED, progress=False)
    rank = init_distributed("cpu").rank
    own = train_segmenter("real", train, val, dataclasses.replace(cfg, steps=2 + rank, val_every=2), workdir /
                          f"unit{rank}", seed=SEED, progress=False, dist=DistributedContext())
    return {name: dataclasses.asdict(r) for name, r in (("full", full), ("killed", killed), ("resumed", resumed),
                                                          ("own_unit", own))}


def worker(workdir: Path) -> None:
    run_worker(workdir, train_runs, watched=("full", "resumed"))


# -------------------------------------------------------------------------------------------- the tests
def _weights(path: Path) -> dict[str, torch.Tensor]:
    from segmentation.model import read_checkpoint

    return read_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    require_gloo()
    workdir = tmp_path_factory.mktemp("seg-ddp")
    launch_torchrun("tests.segmentation.test_distributed", workdir)
    return workdir


def assert_same_network(path: Path, reference: Path, image: np.ndarray, tol: float = 1e-4) -> None:
    """Same weights (biases through the outputs, see the module docstring) and the same outputs on `image`."""
    from segmentation.evaluate import predict_probabilities
    from segmentation.model import load_model

    a, b = _weights(path), _weights(reference)
    assert a.keys() == b.keys()
    for key in (k for k in a if not k.endswith(".bias")):
        torch.testing.assert_close(a[key], b[key], rtol=tol, atol=tol, msg=key)
    np.testing.assert_allclose(predict_probabilities(load_model(path)[0], image),
                               predict_probabilities(load_model(reference)[0], image), atol=tol)


def test_two_processes_train_like_one_process_with_the_same_global_batch(two_process_run, tmp_path):
    from segmentation.train import train_segmenter

    train, val = cases()
    one = train_segmenter("real", train, val, config(), tmp_path, seed=SEED, progress=False)
    two = pd.read_csv(two_process_run / "full" / "metrics.csv")
    ref = pd.read_csv(one.metrics_csv)
    assert list(two["step"]) == list(ref["step"]) == list(range(1, 7))
    pd.testing.assert_series_equal(two["loss"], ref["loss"], rtol=1e-4, atol=1e-4)
    pd.testing.assert_series_equal(two["val_dice"], ref["val_dice"], rtol=0, atol=1e-4)
    assert_same_network(two_process_run / "full" / "last.pt", one.last_checkpoint, val[0].image)


def test_every_rank_returns_the_same_result_and_resume_is_exact(two_process_run):
    reports = rank_reports(two_process_run)
    for name in ("full", "killed", "resumed"):
        assert reports[0][name] == reports[1][name], name
    full, resumed = reports[0]["full"], reports[0]["resumed"]
    assert reports[0]["killed"]["steps"] == 4 and resumed["resumed_from"] == 3 and resumed["steps"] == 6
    assert resumed["best_val_dice"] == full["best_val_dice"] and resumed["best_step"] == full["best_step"]
    a, b = _weights(two_process_run / "full" / "last.pt"), _weights(two_process_run / "resumed" / "last.pt")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    pd.testing.assert_frame_equal(pd.read_csv(two_process_run / "full" / "metrics.csv"),
                                  pd.read_csv(two_process_run / "resumed" / "metrics.csv"))


def test_each_rank_can_train_its_own_unit_in_a_single_process_context(two_process_run):
    """Units of different lengths on each rank: any collective inside would hang or mix the runs."""
    units = [r["own_unit"] for r in rank_reports(two_process_run)]
    assert [u["steps"] for u in units] == [2, 3]
    assert all((two_process_run / f"unit{r}" / "last.pt").is_file() for r in range(WORLD_SIZE))
    first_two = [pd.read_csv(two_process_run / f"unit{r}" / "metrics.csv")["loss"].head(2) for r in range(2)]
    pd.testing.assert_series_equal(*first_two)  # the same seed: the same first steps, computed alone


def test_only_rank_0_writes(two_process_run):
    rank0, rank1 = (r["writes"] for r in rank_reports(two_process_run))
    assert rank1 == []
    assert any("metrics.csv" in w for w in rank0) and any("last.pt" in w for w in rank0)  # the recorder works
    assert sorted(p.name for p in (two_process_run / "full").iterdir() if p.name != "tensorboard") == \
        ["best.pt", "last.pt", "metrics.csv"]


def test_shards_of_a_batch_are_the_samples_of_the_single_process_batch():
    """Per-sample augmentation seeds: rank r's share equals positions [r*B/N, (r+1)*B/N) of the whole batch."""
    from segmentation.datasets import make_train_stream

    train, _ = cases()
    cfg = dataclasses.replace(config(), batch_size=6, intensity_prob=1.0)
    stream = make_train_stream("real", train, None, cfg, seed=1)
    whole = list(stream.loader(0, 3))
    for world_size in (2, 3):
        shares = [list(stream.loader(0, 3, rank=r, world_size=world_size)) for r in range(world_size)]
        for step in range(3):
            for key in ("image", "label"):
                joined = torch.cat([shares[r][step][key] for r in range(world_size)])
                assert torch.equal(joined, whole[step][key])


def test_batch_size_must_split_evenly_over_the_processes(tmp_path):
    from segmentation.runtime import DistributedContext
    from segmentation.train import train_segmenter

    train, val = cases()
    with pytest.raises(ValueError, match="segmentation.batch_size = 4 must be divisible .* \\(3\\)"):
        train_segmenter("real", train, val, config(), tmp_path, dist=DistributedContext(rank=0, world_size=3))
    assert not any(tmp_path.iterdir())


def test_a_single_process_context_without_torchrun(monkeypatch):
    from segmentation.runtime import barrier, broadcast_object, init_distributed, is_main_process

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.is_distributed) == (0, 1, True, False)
    assert ctx.device == torch.device("cpu") and ctx.shard(5, "k") == slice(0, 5)
    assert is_main_process() and broadcast_object({"a": 1}) == {"a": 1}
    barrier()  # no-op


def test_compile_failure_falls_back_to_eager_with_a_warning(broken_compile, tmp_path):
    from segmentation.train import train_segmenter

    train, val = cases()
    cfg = dataclasses.replace(config(), steps=2, val_every=2, compile=True, augment=False)
    with pytest.warns(UserWarning, match="torch.compile failed .*no compiler here.*training without it"):
        result = train_segmenter("real", train, val, cfg, tmp_path, seed=0, progress=False)
    assert result.steps == 2 and pd.read_csv(result.metrics_csv)["loss"].notna().all()


def test_fp16_needs_cuda_and_channels_last_trains(tmp_path):
    from segmentation.train import train_segmenter

    train, val = cases()
    cfg = dataclasses.replace(config(), steps=2, val_every=2, augment=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="segmentation.amp = 'fp16' needs a CUDA device"):
            train_segmenter("real", train, val, dataclasses.replace(cfg, amp="fp16", device="cpu"), tmp_path / "a",
                            progress=False)
    plain = train_segmenter("real", train, val, cfg, tmp_path / "b", seed=0, progress=False)
    last = train_segmenter("real", train, val, dataclasses.replace(cfg, channels_last=True), tmp_path / "c", seed=0,
                           progress=False)
    assert_same_network(last.last_checkpoint, plain.last_checkpoint, val[0].image)  # same maths, other layout


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
