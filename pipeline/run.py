"""The experiment, stage by stage: prepare -> train_generator -> synthesize -> train_segmenters -> evaluate -> report.

Only wiring lives here: which cases go where, what each unit's cache key is made of, and where outputs land.
Every stage writes into RUN_DIR/<stage>/ and ends with a manifest.json; its units are cached and resumed by
`pipeline.cache.run_unit`.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from data.types import CaseRef, PreparedCase
from pipeline.cache import (StageRecord, invalidate_stage, read_json, run_unit, stable_hash, stage_current,
                            write_stage_manifest)
from pipeline.config import PipelineConfig, to_dict
from pipeline.logs import get_logger

STAGES = ("prepare", "train_generator", "synthesize", "train_segmenters", "evaluate", "report")


@dataclass
class Segmenter:
    """One segmenter training run of the sweep."""

    fraction: float
    arm: str
    generator: str  # "" for the real arm
    seed: int

    @property
    def name(self) -> str:
        arm = self.arm.replace("+", "_plus_")
        return f"f{self.fraction:g}/{arm}{'-' + self.generator if self.generator else ''}/seed{self.seed}"


@dataclass
class Run:
    cfg: PipelineConfig
    run_dir: Path
    keys: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    # ------------------------------------------------------------------ data shared by the later stages
    @cached_property
    def split(self) -> dict[str, Any]:
        return read_json(self.stage_dir("prepare") / "splits.json")

    @cached_property
    def cases(self) -> dict[str, PreparedCase]:
        """Every prepared real case by case id, read from the prepare stage's cache (no NIfTI reading)."""
        from data.cache import prepare_cases

        refs = self._refs(self.split["train"] + self.split["val"], test=False)
        refs += self._refs(self.split["test"], test=True)
        cases = prepare_cases(refs, self.cfg.data.preprocess, self.stage_dir("prepare") / "cache",
                              label_map=self.cfg.data.label_map)
        return {c.case_id: c for c in cases}

    def _refs(self, patients: list[str], *, test: bool) -> list[CaseRef]:
        from data.layouts import list_cases

        root = self.test_root if test else self.data_root
        wanted = set(patients)
        return [r for r in list_cases(root, self.cfg.data.layout) if r.patient_id in wanted]

    @property
    def data_root(self) -> Path:
        return Path(self.cfg.data.root) if self.cfg.data.root else self.stage_dir("prepare") / "phantom"

    @property
    def test_root(self) -> Path:
        return Path(self.cfg.data.test_root) if self.cfg.data.test_root else self.data_root

    def patient_cases(self, patients: list[str]) -> list[PreparedCase]:
        wanted = set(patients)
        return [c for c in self.cases.values() if c.patient_id in wanted]

    def fraction_patients(self, fraction: float) -> list[str]:
        from data.splits import fraction_key

        return self.split["fractions"][fraction_key(fraction)]

    def segmenters(self) -> list[Segmenter]:
        exp = self.cfg.experiment
        runs = []
        for fraction in exp.fractions:
            for arm in exp.arms:
                for generator in ([""] if arm == "real" else exp.generators):
                    runs.extend(Segmenter(fraction, arm, generator, seed) for seed in exp.seeds)
        return runs


# ------------------------------------------------------------------------------------------------ stages
def prepare(run: Run) -> dict[str, Any]:
    from data.cache import prepare_cases
    from data.layouts import list_cases
    from data.splits import make_split, write_split

    cfg, log = run.cfg, get_logger()
    stage_dir = run.stage_dir("prepare")
    if not cfg.data.root:
        from data.phantom import PHANTOM_VERSION, write_phantom

        key = stable_hash("phantom", PHANTOM_VERSION, cfg.data.phantom_patients, cfg.data.phantom_seed)
        run_unit(stage_dir / "phantom", key, lambda d: {"patients": len(
            write_phantom(d, n_patients=cfg.data.phantom_patients, seed=cfg.data.phantom_seed))})
        log.info(f"phantom: {cfg.data.phantom_patients} patients in {run.data_root}")
    refs = list_cases(run.data_root, cfg.data.layout)
    test_refs = list_cases(run.test_root, cfg.data.layout) if cfg.data.test_root else []
    strata = {r.patient_id: str(r.metadata.get(cfg.data.split.stratify_by, ""))
              for r in refs} if cfg.data.split.stratify_by else None
    split = make_split(sorted({r.patient_id for r in refs}), cfg.data.split,
                       test_patient_ids=sorted({r.patient_id for r in test_refs}) or None, strata=strata,
                       fractions=cfg.experiment.fractions)
    write_split(stage_dir / "splits.json", split)
    cases = prepare_cases(refs + test_refs, cfg.data.preprocess, stage_dir / "cache", label_map=cfg.data.label_map)
    log.info(f"prepared {len(cases)} cases: {len(split.train)} train / {len(split.val)} val / "
             f"{len(split.test)} test patients")
    return {"n_cases": len(cases), "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test)}


def prepare_key(run: Run) -> str:
    """Config of the data section + the input files (path, size, mtime): cheap to compute before running."""
    from data.layouts import list_cases

    files = []
    cfg = run.cfg.data
    roots = [cfg.root] + ([cfg.test_root] if cfg.test_root else []) if cfg.root else []
    for root in roots:
        for ref in list_cases(Path(root), cfg.layout):
            for path in (ref.image_path, ref.mask_path):
                if path is not None:
                    stat = Path(path).stat()
                    files.append((str(path), stat.st_size, stat.st_mtime_ns))
    return stable_hash(to_dict(cfg), run.cfg.experiment.fractions, files)


def train_generator(run: Run) -> dict[str, Any]:
    from synthesis.base import build_generator

    results = {}
    for fraction in run.cfg.experiment.fractions:
        cases = run.patient_cases(run.fraction_patients(fraction))
        masks = np.concatenate([c.mask for c in cases])
        images = np.concatenate([c.image for c in cases])
        for name in run.cfg.experiment.generators:
            gen_cfg = run.cfg.synthesis.generator_config(name)

            def work(unit_dir: Path, name=name, gen_cfg=gen_cfg) -> dict[str, Any]:
                generator = build_generator(name, gen_cfg)
                figures = generator.fit(masks, images, unit_dir, seed=run.cfg.synthesis.seed)
                generator.save(unit_dir / "generator.pt")
                return dict(figures or {}, slices=int(len(masks)))

            unit = f"f{fraction:g}/{name}"
            key = stable_hash(run.keys["prepare"], run.fraction_patients(fraction), name, to_dict(gen_cfg),
                              run.cfg.synthesis.seed)
            get_logger().info(f"train_generator {unit}: {len(cases)} cases, {len(masks)} slices")
            results[unit] = {"key": key, **run_unit(run.stage_dir("train_generator") / unit, key, work)}
    return results


def synthesize(run: Run) -> dict[str, Any]:
    from synthesis.base import load_generator
    from synthesis.masks import draw_masks
    from synthesis.synthesize import synthesize_dataset

    scfg = run.cfg.synthesis
    generated = read_json(run.stage_dir("train_generator") / "manifest.json")["results"]
    results = {}
    for fraction in run.cfg.experiment.fractions:
        cases = run.patient_cases(run.fraction_patients(fraction))
        for name in run.cfg.experiment.generators:
            unit = f"f{fraction:g}/{name}"
            gen_unit = generated[unit]

            def work(unit_dir: Path, unit=unit, name=name, fraction=fraction) -> dict[str, Any]:
                generator = load_generator(run.stage_dir("train_generator") / unit / "generator.pt")
                draws, rejects = draw_masks(scfg.masks.source_mix, cases, scfg.n_volumes, seed=scfg.seed,
                                            cfg=scfg.masks)
                manifest = synthesize_dataset(generator, draws, unit_dir / "cases", seed=scfg.seed,
                                              generator_name=name)
                synthetic_cases(run, fraction, name)  # preprocess once here, so the segmenters only read
                return {"n_volumes": int(len(manifest)), "rejects": rejects.as_dict()}

            key = stable_hash(gen_unit["key"], to_dict(scfg))
            results[unit] = {"key": key, **run_unit(run.stage_dir("synthesize") / unit, key, work)}
    return results


def synthetic_cases(run: Run, fraction: float, generator: str) -> list[PreparedCase]:
    """The synthetic volumes of one synthesize unit through the same preprocessing (cached in that unit)."""
    from data.cache import prepare_cases
    from data.layouts import list_cases

    root = run.stage_dir("synthesize") / f"f{fraction:g}" / generator / "cases"
    return prepare_cases(list_cases(root, "acdc"), run.cfg.data.preprocess, root.parent / "cache")


def train_segmenters(run: Run) -> dict[str, Any]:
    from segmentation.train import train_segmenter

    synth = read_json(run.stage_dir("synthesize") / "manifest.json")["results"] if any(
        s.generator for s in run.segmenters()) else {}
    val_cases = run.patient_cases(run.split["val"])
    results = {}
    for seg in run.segmenters():
        real_cases = run.patient_cases(run.fraction_patients(seg.fraction))
        synth_key = synth[f"f{seg.fraction:g}/{seg.generator}"]["key"] if seg.generator else None

        def work(unit_dir: Path, seg=seg, real_cases=real_cases) -> dict[str, Any]:
            synthetic = synthetic_cases(run, seg.fraction, seg.generator) if seg.generator else None
            result = train_segmenter(seg.arm, real_cases, val_cases, run.cfg.segmentation, unit_dir,
                                     synthetic_cases=synthetic, seed=seg.seed, preprocess=run.cfg.data.preprocess)
            return _plain(result)

        key = stable_hash(run.keys["prepare"], run.fraction_patients(seg.fraction), run.split["val"],
                          dataclasses.asdict(seg), to_dict(run.cfg.segmentation), synth_key)
        get_logger().info(f"train_segmenters {seg.name}")
        results[seg.name] = {"key": key, **run_unit(run.stage_dir("train_segmenters") / seg.name, key, work)}
    return results


def evaluate(run: Run) -> dict[str, Any]:
    from data.io import write_csv
    from segmentation.evaluate import evaluate_cases, summarize
    from segmentation.model import load_model
    from segmentation.statistics import compare_to_real, seed_table

    stage_dir = run.stage_dir("evaluate")
    trained = read_json(run.stage_dir("train_segmenters") / "manifest.json")["results"]
    test_cases = run.patient_cases(run.split["test"])
    frames = []
    for seg in run.segmenters():
        def work(unit_dir: Path, seg=seg) -> dict[str, Any]:
            model, _ = load_model(run.stage_dir("train_segmenters") / seg.name / "best.pt")
            frame = evaluate_cases(model, test_cases, unit_dir / "predictions", arm=seg.arm,
                                   fraction=seg.fraction, seed=seg.seed, label_map=run.cfg.data.label_map)
            frame.insert(1, "generator", seg.generator)
            write_csv(frame, unit_dir / "per_case.csv")
            return {"rows": int(len(frame))}

        key = stable_hash(trained[seg.name]["key"], run.split["test"])
        run_unit(stage_dir / seg.name, key, work)
        frames.append(pd.read_csv(stage_dir / seg.name / "per_case.csv", keep_default_na=False,
                                  na_values=["", "nan", "NaN"]))
    per_case = pd.concat(frames, ignore_index=True)
    per_case["generator"] = per_case["generator"].fillna("")
    write_csv(per_case, stage_dir / "per_case.csv")
    write_csv(summarize(per_case), stage_dir / "summary.csv")
    write_csv(compare_to_real(per_case, n_boot=run.cfg.experiment.bootstrap_samples), stage_dir / "statistics.csv")
    write_csv(seed_table(per_case), stage_dir / "seeds.csv")
    return {"rows": int(len(per_case))}


def report(run: Run) -> dict[str, Any]:
    from pipeline.report import write_report

    paths = write_report(run)
    return {k: str(v) for k, v in paths.items()}


STAGE_FUNCTIONS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "prepare": prepare, "train_generator": train_generator, "synthesize": synthesize,
    "train_segmenters": train_segmenters, "evaluate": evaluate, "report": report,
}


def stage_config(run: Run, stage: str) -> Any:
    """The config section(s) a stage's key is made of (its inputs are the upstream keys)."""
    cfg = run.cfg
    return {
        "prepare": lambda: to_dict(cfg.data),
        "train_generator": lambda: {"synthesis": to_dict(cfg.synthesis), "generators": cfg.experiment.generators},
        "synthesize": lambda: to_dict(cfg.synthesis),
        "train_segmenters": lambda: {"segmentation": to_dict(cfg.segmentation), "experiment": to_dict(cfg.experiment)},
        "evaluate": lambda: to_dict(cfg.experiment),
        "report": lambda: {"profile": cfg.profile},
    }[stage]()


UPSTREAM = {"prepare": (), "train_generator": ("prepare",), "synthesize": ("train_generator",),
            "train_segmenters": ("prepare", "synthesize"), "evaluate": ("train_segmenters",),
            "report": ("evaluate",)}


def stage_key(run: Run, stage: str) -> str:
    if stage == "prepare":
        return prepare_key(run)
    return stable_hash(stage, stage_config(run, stage), upstream_keys(run, stage))


def upstream_keys(run: Run, stage: str) -> dict[str, str]:
    """Keys of the upstream stages this run has (a real-only sweep has no synthesis stages)."""
    return {u: run.keys[u] for u in UPSTREAM[stage] if u in run.keys}


def needed_stages(cfg: PipelineConfig) -> list[str]:
    uses_synthesis = any(arm != "real" for arm in cfg.experiment.arms)
    return [s for s in STAGES if uses_synthesis or s not in ("train_generator", "synthesize")]


def run_pipeline(cfg: PipelineConfig, *, stages: list[str] | None = None, force: tuple[str, ...] = ()) -> Run:
    """Run (or resume) the stages in order; a current stage is skipped, a stale or forced one re-runs."""
    log = get_logger()
    run = Run(cfg=cfg, run_dir=Path(cfg.run_dir))
    wanted = stages or needed_stages(cfg)
    for stage in needed_stages(cfg):
        stage_dir = run.stage_dir(stage)
        if stage in force:
            invalidate_stage(stage_dir)
        key = stage_key(run, stage)
        run.keys[stage] = key
        if stage_current(stage_dir, key) is not None:
            log.info(f"[{stage}] up to date, skipped")
            continue
        if stage not in wanted:
            raise RuntimeError(f"stage {stage!r} is needed by {wanted} but is not up to date; run it first "
                               f"(add it to --stages)")
        log.info(f"[{stage}] running")
        t0 = time.perf_counter()
        results = STAGE_FUNCTIONS[stage](run)
        wall = round(time.perf_counter() - t0, 2)
        run.timings[stage] = wall
        write_stage_manifest(stage_dir, StageRecord(
            stage=stage, key=key, config=stage_config(run, stage),
            inputs=upstream_keys(run, stage), results=results, wall_s=wall))
        log.info(f"[{stage}] done in {wall:.1f} s")
        if stage == wanted[-1]:
            break
    return run


def _plain(result: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(result):
        result = dataclasses.asdict(result)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dict(result).items()}
