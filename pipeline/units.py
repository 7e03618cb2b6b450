"""The contract between the pipeline and its stages: planned units, typed artifacts, one executor.

A stage plans its work as a list of `Unit`s (name, output folder, cache key, the function that computes it,
whether processes share it) and hands the list to `execute`, which skips the units already done with their key,
resumes started ones (`pipeline.cache.run_unit`) and spreads shared units over torchrun's processes by
their place in the list: every process plans the same list, so nothing depends on the order of calls.

A unit's result (in its done.json and the stage's manifest.json) holds a typed artifact where later stages
need its files (`GeneratorArtifact`, `SyntheticSet`, `SegmenterArtifact`): paths relative to the unit
folder, read back with `artifact`, so no stage or report rebuilds another stage's file names.

    stage plan -> [Unit, ...] -> execute -> {name: {"key", "artifact", ...}} -> manifest.json -> artifact()
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from data.io import inside
from pipeline.cache import DONE, read_json, run_unit, unit_done


# the stages in the order they run; each unit of one reads only the outputs of stages before it
STAGES = ("prepare", "train_generator", "synthesize", "train_segmenters", "quality", "evaluate", "report")


class RunLike(Protocol):
    """What the executor and `artifact` need of a run (`pipeline.run.Run`)."""

    ctx: Any  # segmentation.runtime.DistributedContext
    mode: str  # "ddp", "sweep" or "solo": how the current stage's training units use the processes

    def stage_dir(self, stage: str) -> Path: ...


@dataclass(frozen=True)
class Unit:
    """One cached piece of a stage's work."""

    name: str  # its folder below the stage folder (e.g. "f0.1/d1/gmm") and its entry in the stage's results
    folder: Path
    key: str  # the hash of everything its result depends on
    compute: Callable[[Path], dict[str, Any]]  # fills the folder, returns the result (JSON-able)
    shared: bool = False  # worked on by the processes (together under DDP, or dealt to one in sweep mode); else rank 0
    ddp: bool = True  # for a shared unit: False when processes gain nothing by doing it together (fitting the GMM,
    # sampling): under DDP rank 0 does it alone, in a sweep it is still dealt out


def execute(run: RunLike, units: list[Unit]) -> dict[str, dict[str, Any]]:
    """Every unit's result by name ({"key": ..., **result}), in the order planned. Shared units under
    torchrun: all processes do each together (`launch.mode: ddp`), or unit i is done by process
    i mod world_size alone (`sweep`) and every process then reads the others' done.json. Other units (and
    everything in a single process or a stage that rank 0 runs alone) run where they are called."""
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise ValueError(f"units planned twice: {sorted({n for n in names if names.count(n) > 1})}")
    folders = {Path(u.folder) for u in units}
    nested = sorted(u.name for u in units if set(Path(u.folder).parents) & folders)
    if nested:  # resetting the outer unit's folder would delete them, under another process in a sweep
        raise ValueError(f"units planned inside other units' folders: {nested}")
    ctx = run.ctx
    results: dict[str, dict[str, Any]] = {}
    if ctx.is_distributed and run.mode == "sweep":
        for i, unit in enumerate(units):
            if i % ctx.world_size == ctx.rank:
                run_unit(unit.folder, unit.key, unit.compute)
        ctx.barrier()
        for unit in units:
            record = unit_done(unit.folder, unit.key)
            if record is None:
                raise RuntimeError(f"{unit.folder}: not finished by the process it was dealt to")
            results[unit.name] = {"key": unit.key, **record["result"]}
        return results
    for unit in units:
        if not ctx.is_distributed or run.mode == "solo":
            result = run_unit(unit.folder, unit.key, unit.compute)
        elif unit.shared and unit.ddp:
            result = run_unit(unit.folder, unit.key, unit.compute, ctx=ctx)
        else:
            result = ctx.main_then_broadcast(lambda unit=unit: run_unit(unit.folder, unit.key, unit.compute))
        results[unit.name] = {"key": unit.key, **result}
    return results


def quality_unit(fraction: float, draw: int = 0) -> str:
    """The quality stage's unit of one training subset: a folder below the subset's, since draw 0's subset
    folder holds the other draws' (`f0.1/d2`) and a unit's folder must not hold another unit."""
    return f"{subset_dir(fraction, draw)}/generators"


def subset_dir(fraction: float, draw: int = 0) -> str:
    """The folder of one training subset's units: `f0.1` for draw 0 (the names of a run without draws),
    `f0.1/d2` for draw 2."""
    return f"f{fraction:g}" + (f"/d{draw}" if draw else "")


# ------------------------------------------------------------------------------------------------ artifacts
@dataclass(frozen=True)
class GeneratorArtifact:
    """A trained (or fitted) generator: `synthesis.base.load_generator(path)`."""

    path: str = "generator.pt"
    learned: bool = False  # trained by gradient descent (checkpoints, DDP) rather than fitted


@dataclass(frozen=True)
class SyntheticSet:
    """Synthetic volumes in the ACDC layout, with their manifest (`synthesis.synthesize.read_manifest`)."""

    cases_dir: str = "cases"
    cache_dir: str = "cache"  # the volumes preprocessed like the real cases (`data.cache`)


@dataclass(frozen=True)
class SegmenterArtifact:
    """A trained segmenter: the checkpoint chosen on validation and its training curve."""

    best_checkpoint: str = "best.pt"
    metrics_csv: str = "metrics.csv"


@dataclass(frozen=True)
class QualityArtifact:
    """The quality table of one training subset and its figures (`figure`: one per generator and kind)."""

    table: str = "quality.csv"
    figures_dir: str = "."

    def figure(self, kind: str, generator: str) -> Path:
        """The `kind` figure ("pairs": closest synthetic/training pairs, "styles": style seeds) of `generator`."""
        return Path(self.figures_dir) / f"{kind}_{generator}.png"


A = TypeVar("A", GeneratorArtifact, SyntheticSet, SegmenterArtifact, QualityArtifact)


def with_artifact(artifact: Any, result: dict[str, Any] | None = None) -> dict[str, Any]:
    """A unit's result carrying its artifact (paths relative to the unit folder)."""
    return {"artifact": dataclasses.asdict(artifact), **(result or {})}


def artifact(run: RunLike, stage: str, name: str, kind: type[A]) -> A:
    """Unit `name`'s artifact of stage `stage`, from the unit's own record (its done.json: one small file per
    call, not the whole stage manifest), its paths made absolute. A unit done before artifacts were recorded has
    the default file names of `kind` (the names those runs wrote)."""
    folder = run.stage_dir(stage) / name
    source = folder / DONE
    if not source.is_file():
        raise KeyError(f"{source}: unit {name!r} of stage {stage!r} is not done")
    recorded = (read_json(source).get("result") or {}).get("artifact") or {}
    found = kind(**{f.name: recorded[f.name] for f in dataclasses.fields(kind) if f.name in recorded})
    return dataclasses.replace(found, **{  # a path it records never leads out of the unit folder
        f.name: str(inside(folder, getattr(found, f.name), source=source, what=f"{name} {f.name}"))
        for f in dataclasses.fields(kind) if f.type in (str, "str")})
