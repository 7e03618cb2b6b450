"""The contract between the pipeline and its stages (issue 18): planned units, one executor that deals them
by their place in the list, typed artifacts read back without rebuilding file names."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from data.types import DataError
from pipeline.cache import write_json
from pipeline.units import SegmenterArtifact, Unit, artifact, execute, with_artifact
from segmentation.runtime import DistributedContext


class FakeContext(DistributedContext):
    """A process of a torchrun whose peers already did their share (their done.json is on disk)."""

    def __init__(self, rank: int = 0, world_size: int = 2):
        super().__init__(rank=rank, world_size=world_size)

    def barrier(self) -> None:  # the peers are simulated: nothing to wait for
        pass


@dataclass
class FakeRun:
    ctx: FakeContext
    mode: str
    run_dir: Path

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage


def units(root: Path, computed: list[str]) -> list[Unit]:
    def compute(unit_dir: Path) -> dict:
        computed.append(unit_dir.name)
        return {"value": unit_dir.name}

    return [Unit(f"u{i}", root / f"u{i}", f"key{i}", compute, shared=True) for i in range(5)]


def test_a_sweep_deals_units_by_their_place_in_the_plan(tmp_path):
    computed: list[str] = []
    with pytest.raises(RuntimeError, match="u0: not finished"):  # rank 1 goes first: rank 0's share is not done
        execute(FakeRun(FakeContext(rank=1), "sweep", tmp_path), units(tmp_path, computed))
    assert computed == ["u1", "u3"]
    computed = []
    results = execute(FakeRun(FakeContext(rank=0), "sweep", tmp_path), units(tmp_path, computed))
    assert computed == ["u0", "u2", "u4"]
    assert list(results) == [f"u{i}" for i in range(5)]  # every unit's result, in the planned order
    assert results["u3"] == {"key": "key3", "value": "u3"}
    computed = []
    execute(FakeRun(FakeContext(rank=0), "sweep", tmp_path), units(tmp_path, computed))
    assert computed == []  # planned again (a resumed run): nothing is computed twice


def test_a_unit_a_peer_did_not_finish_is_an_error_naming_it(tmp_path):
    run = FakeRun(FakeContext(rank=0), "sweep", tmp_path)
    with pytest.raises(RuntimeError, match="u1: not finished"):
        execute(run, units(tmp_path, []))


def test_a_unit_planned_twice_is_refused(tmp_path):
    twice = units(tmp_path, [])[:2] * 2
    with pytest.raises(ValueError, match="planned twice"):
        execute(FakeRun(FakeContext(world_size=1), "ddp", tmp_path), twice)


def test_a_unit_inside_another_units_folder_is_refused(tmp_path):
    """Resetting the outer unit would delete the inner one (under another process, in a sweep)."""
    outer, inner = (Unit(name, tmp_path / name, "k", lambda d: {}) for name in ("f0.5", "f0.5/d1"))
    with pytest.raises(ValueError, match=r"inside other units' folders: \['f0.5/d1'\]"):
        execute(FakeRun(FakeContext(world_size=1), "ddp", tmp_path), [outer, inner])


def test_artifacts_are_read_from_the_unit_record_and_never_lead_out_of_their_unit(tmp_path):
    stage = tmp_path / "train_segmenters"
    results = {"a/seed0": with_artifact(SegmenterArtifact(best_checkpoint="ckpt/best_7.pt")),
               "old/seed0": {"best_val_dice": 0.5},  # done before artifacts were recorded
               "evil/seed0": {"artifact": {"best_checkpoint": "../../../etc/passwd"}}}
    for name, result in results.items():
        write_json(stage / name / "done.json", {"key": "k", "result": result})
    run = FakeRun(FakeContext(world_size=1), "ddp", tmp_path)
    found = artifact(run, "train_segmenters", "a/seed0", SegmenterArtifact)
    assert found.best_checkpoint == str(stage / "a/seed0/ckpt/best_7.pt")
    assert found.metrics_csv == str(stage / "a/seed0/metrics.csv")
    assert artifact(run, "train_segmenters", "old/seed0", SegmenterArtifact).best_checkpoint == \
        str(stage / "old/seed0/best.pt")
    with pytest.raises(DataError, match="evil/seed0 best_checkpoint"):
        artifact(run, "train_segmenters", "evil/seed0", SegmenterArtifact)
    with pytest.raises(KeyError, match="not done"):
        artifact(run, "train_segmenters", "missing/seed0", SegmenterArtifact)
    assert json.loads((stage / "a/seed0/done.json").read_text())["result"]["artifact"]["metrics_csv"] \
        == "metrics.csv"
