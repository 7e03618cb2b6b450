"""The pipeline under torchrun (2 processes, gloo on CPU), started by `cmr-synth run` itself.

sweep: the segmenters are dealt out to the processes, each trained by one process: results are identical to a
single-process run. ddp: every segmenter is trained by both processes, each on half of every batch: the same
within floating-point noise. In both, only rank 0 writes the stage manifests, run.log and the report.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch.distributed as dist

from tests.pipeline.test_run import TINY

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

SMALL = [*TINY, "experiment.fractions=[1.0]", "experiment.seeds=[0, 1]", "quality.enabled=false"]


def cmr_synth_run(root: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    sets = [f"data.root={root}", *SMALL, *extra]
    config = run_dir.parent / f"{run_dir.name}.yaml"
    config.write_text("{}\n")  # the built-in defaults, not the repository's pipeline.yaml profiles
    cmd = [sys.executable, "-m", "pipeline", "run", str(config), "--run-dir", str(run_dir),
           *[arg for item in sets for arg in ("--set", item)]]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def single(phantom_root, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("single")
    cmr_synth_run(phantom_root, run_dir)
    return run_dir


def per_case(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "evaluate" / "per_case.csv").sort_values(["arm", "seed", "case"]).reset_index(drop=True)


@pytest.mark.parametrize("mode", ["sweep", "ddp"])
def test_two_processes_give_the_single_process_results(phantom_root, single, tmp_path, mode):
    run_dir = tmp_path / mode
    done = cmr_synth_run(phantom_root, run_dir, "launch.nproc_per_node=2", f"launch.mode={mode}")
    assert "torch.distributed.run" in done.stdout  # it relaunched itself under torchrun
    log = (run_dir / "run.log").read_text()
    assert f"on 2 processes ({mode})" in log and "[rank 1]" not in log
    assert f"[synthesize] running on 2 processes ({mode})" in log  # a sweep deals synthetic sets out too
    ours, reference = per_case(run_dir), per_case(single)
    if mode == "sweep":  # each unit trained by one process, as in the single-process run
        pd.testing.assert_frame_equal(ours, reference)
    else:  # the same global batches, gradients averaged over two halves: equal up to rounding
        dice = [c for c in reference.columns if c.startswith("dice_")]
        assert (ours[dice] - reference[dice]).abs().to_numpy().max() < 0.02
    for stage in ("train_segmenters", "evaluate", "report"):
        assert (run_dir / stage / "manifest.json").is_file()
    assert not list(run_dir.rglob("*.tmp*"))


def quality_table(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "quality" / "quality.csv").sort_values(["draw", "generator"]).reset_index(drop=True)


def test_a_sweep_deals_the_quality_units_out(phantom_root, tmp_path):
    """A quality-only study (the real arm judges the GMM) on two draws of patients: one quality unit per process
    (draw 0's subset folder holds draw 1's: their units must not nest, or resetting one deletes the other under
    the other process), the table equal to a single process's; quality runs before evaluation, while the
    processes are still open."""
    study = ["experiment.fractions=[0.5]", "experiment.draws=2", "experiment.seeds=[0]", "experiment.arms=[real]",
             "quality.enabled=true"]
    single_dir, sweep_dir = tmp_path / "single", tmp_path / "sweep"
    cmr_synth_run(phantom_root, single_dir, *study)
    cmr_synth_run(phantom_root, sweep_dir, *study, "launch.nproc_per_node=2", "launch.mode=sweep")
    log = (sweep_dir / "run.log").read_text()
    assert "[quality] running on 2 processes (sweep)" in log
    assert log.index("[quality] done") < log.index("[evaluate] running")
    ours, reference = quality_table(sweep_dir), quality_table(single_dir)
    assert len(ours) == 4  # the real reference row and the GMM's, per draw
    pd.testing.assert_frame_equal(ours, reference, check_exact=False, rtol=1e-6)
