"""The experiment, stage by stage: prepare -> train_generator -> synthesize -> train_segmenters -> quality ->
evaluate -> report.

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

from data.config import TestSetConfig
from data.io import read_table
from data.settings import result_settings, synthetic_only
from data.types import CaseRef, PreparedCase
from pipeline.cache import (MANIFEST, UNSEALED, StageRecord, invalidate_stage, read_json, stable_hash, stage_current,
                            unsealings, write_stage_manifest)
from pipeline.config import PipelineConfig, conditions, to_dict
from pipeline.errors import ConfigError
from pipeline.logs import get_logger
from pipeline.report import write_report
from pipeline.units import (STAGES, GeneratorArtifact, QualityArtifact, SegmenterArtifact, SyntheticSet, Unit,
                            artifact, execute, quality_unit, subset_dir, with_artifact)
from segmentation.config import SegmentationConfig
from segmentation.runtime import DistributedContext
from segmentation.statistics import with_conditions
from synthesis.base import REGISTRY

# the stages several processes share (launch.mode). synthesize and quality: sampling a learned generator (the
# diffusion model's denoising loop) costs minutes per subset, so a sweep deals their units out too. quality reads
# validation patients only, so it runs before evaluate: a sealed run's training command can include it, and
# evaluation (MONAI's metrics gather across an open process group) still runs after the group is closed
SHARED_STAGES = ("train_generator", "synthesize", "train_segmenters", "quality")


@dataclass
class Segmenter:
    """One segmenter training run of the sweep."""

    fraction: float
    arm: str
    generator: str  # "" for the real arm; "a+b" for a mixture (experiment.mixtures)
    seed: int
    augmentation: str = "standard"  # segmentation.augmentation this segmenter trains with
    draw: int = 0  # which draw of the fraction's training patients (experiment.draws)
    # A synthetic share of experiment.synthetic_ratios other than segmentation.synthetic_ratio; None: that one
    synthetic_ratio: float | None = None
    # This generator's own segmentation settings (experiment.segmentation_by_generator); in the key through them
    by_generator: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        arm = self.arm.replace("+", "_plus_")
        aug = "" if self.augmentation == "standard" else f"_aug-{self.augmentation}"  # standard: the old names
        share = "" if self.synthetic_ratio is None else f"_share{self.synthetic_ratio:g}"
        return f"{subset_dir(self.fraction, self.draw)}/{arm}{'-' + self.generator if self.generator else ''}" \
               f"{aug}{share}/seed{self.seed}"

    def identity(self) -> dict[str, Any]:
        """What a unit key holds of this segmenter: not the draw, whose patients are in the key themselves, so
        draw 0 keeps the keys of a run from before draws existed; the synthetic share only where it is swept
        (it is in the settings of the key anyway)."""
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("draw", "by_generator") and not (k == "synthetic_ratio" and v is None)}

    def config(self, cfg: SegmentationConfig) -> SegmentationConfig:
        """The segmentation settings this segmenter trains with."""
        share = {} if self.synthetic_ratio is None else {"synthetic_ratio": self.synthetic_ratio}
        return dataclasses.replace(cfg, augmentation=self.augmentation, **self.by_generator, **share)

    def judge(self, cfg: SegmentationConfig) -> Segmenter | None:
        """The real-arm segmenter of the same patients, seed and augmentation that filters this one's synthetic
        slices (`segmentation.synthetic_filter`), or None."""
        if self.arm == "real" or not self.config(cfg).synthetic_filter:
            return None
        return Segmenter(self.fraction, "real", "", self.seed, self.augmentation, self.draw)

    def share(self, cfg: SegmentationConfig) -> float:
        """The share of synthetic samples in its batches: 0 for the real arm, 1 for the synthetic arm."""
        return {"real": 0.0, "synthetic": 1.0}.get(self.arm, float(self.config(cfg).synthetic_ratio))


@dataclass
class Run:
    cfg: PipelineConfig
    run_dir: Path
    keys: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    ctx: DistributedContext = field(default_factory=DistributedContext)
    # How the units of the current stage use the processes (`pipeline.units.execute`): "ddp" (all train each
    # unit together), "sweep" (units dealt out, each trained by one process), "solo" (rank 0 alone).
    mode: str = "ddp"
    unseal: bool = False  # `cmr-synth run --unseal`: score the sealed test set (evaluate.sealed) this once
    _extra_cases: dict[str, list[PreparedCase]] = field(default_factory=dict, repr=False)

    def train_context(self) -> DistributedContext | None:
        """What a trainer is told about the processes: all of them under ddp, only itself in a sweep (on this
        process's device), None (the trainer's own default) in a single process."""
        if not self.ctx.is_distributed:
            return None
        return self.ctx if self.mode == "ddp" else DistributedContext(device=self.ctx.device)

    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    @property
    def test_open(self) -> bool:
        """Whether this run may read the test patients (and extra test sets): not sealed, or `--unseal`."""
        return not self.cfg.evaluate.sealed or self.unseal

    # ------------------------------------------------------------------ data shared by the later stages
    @cached_property
    def split(self) -> dict[str, Any]:
        return read_json(self.stage_dir("prepare") / "splits.json")

    @cached_property
    def data_key(self) -> str:
        """What every unit downstream of prepare is keyed on: the data settings and the content of the training
        and validation patients' files (`content_key`), as the prepare stage recorded it. A dataset
        provisioned again with new mtimes re-runs prepare (seconds) and nothing else."""
        return read_json(self.stage_dir("prepare") / MANIFEST)["results"]["data_key"]

    @cached_property
    def test_key(self) -> str:
        """The content of the test patients' and the extra test sets' files: in the evaluation keys of a run
        whose test set is open (only then may their masks be read)."""
        if not self.test_open:
            raise RuntimeError("the test set is sealed: its files are not read, not even to hash them")
        from data.layouts import list_cases

        refs = [(r, self.cfg.data.label_map) for r in self._refs(self.split["test"], test=True)]
        for test_set in self.cfg.data.extra_test_sets:
            refs += [(r, test_set.label_map) for r in list_cases(self.extra_root(test_set), test_set.layout)]
        return stable_hash([content_key(r, self.cfg.data.preprocess, m) for r, m in refs])

    @cached_property
    def cases(self) -> dict[str, PreparedCase]:
        """Every prepared real case by case id, read from the prepare stage's cache (no NIfTI reading); the test
        patients' only when the test set is open (`test_open`)."""
        from data.cache import prepare_cases

        refs = self._refs(self.split["train"] + self.split["val"], test=False)
        refs += self._refs(self.split["test"], test=True) if self.test_open else []
        cases = prepare_cases(refs, self.cfg.data.preprocess, self.stage_dir("prepare") / "cache",
                              label_map=self.cfg.data.label_map, workers=self.cfg.data.preprocess_workers)
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

    def extra_root(self, test_set: TestSetConfig) -> Path:
        if test_set.root:
            return Path(test_set.root)
        return self.stage_dir("prepare") / "extra" / test_set.name / "phantom"

    def extra_cases(self, test_set: TestSetConfig) -> list[PreparedCase]:
        """Every case of an extra test set (all of its patients are test patients), from its own cache."""
        from data.cache import prepare_cases
        from data.layouts import list_cases

        if test_set.name not in self._extra_cases:
            refs = list_cases(self.extra_root(test_set), test_set.layout)
            self._extra_cases[test_set.name] = prepare_cases(
                refs, self.cfg.data.preprocess, self.stage_dir("prepare") / "extra" / test_set.name / "cache",
                label_map=test_set.label_map, workers=self.cfg.data.preprocess_workers)
        return self._extra_cases[test_set.name]

    def patient_cases(self, patients: list[str]) -> list[PreparedCase]:
        wanted = set(patients)
        return [c for c in self.cases.values() if c.patient_id in wanted]

    def fraction_patients(self, fraction: float, draw: int = 0) -> list[str]:
        """The training patients of draw `draw` of `fraction` (draw 0: the nested subset)."""
        from data.splits import fraction_key

        if draw == 0:
            return self.split["fractions"][fraction_key(fraction)]
        return self.split["draws"][fraction_key(fraction)]["patients"][draw]

    def test_patients(self, fraction: float, draw: int = 0) -> list[str]:
        """The patients draw `draw` of `fraction` is tested on: the test set, or under outer cross-validation
        (experiment.outer_folds) its draw's fold."""
        from data.splits import fraction_key

        folds = self.split.get("test_folds") or []
        if not folds:
            return self.split["test"]
        return folds[self.split["draws"][fraction_key(fraction)]["folds"][draw]]

    def subsets(self) -> list[tuple[float, int]]:
        """(fraction, draw) of every training subset the study is repeated on, in order."""
        from data.splits import fraction_key

        draws = self.split.get("draws", {})
        return [(fraction, draw) for fraction in self.cfg.experiment.fractions
                for draw in range(len(draws[fraction_key(fraction)]["patients"]) if draws else 1)]

    @property
    def real_augmentations(self) -> list[str]:
        """The augmentation settings the real arm is trained with (experiment.augmentations, else
        segmentation.augmentation, less what experiment.conditions leaves out)."""
        return [augmentation for arm, _, augmentation in conditions(self.cfg) if arm == "real"]

    def segmenters(self) -> list[Segmenter]:
        exp = self.cfg.experiment
        runs = []
        for fraction, draw in self.subsets():
            for arm, generator, augmentation in conditions(self.cfg):
                own = exp.segmentation_by_generator.get(generator, {}) if arm != "real" else {}
                for share in self.swept_shares() if arm == "real+synthetic" else [None]:
                    runs.extend(Segmenter(fraction, arm, generator, seed, augmentation, draw, share, dict(own))
                                for seed in exp.seeds)
        return runs

    def swept_shares(self) -> list[float | None]:
        """The synthetic shares a real+synthetic arm is trained with (experiment.synthetic_ratios): None stands
        for segmentation.synthetic_ratio, whose segmenters keep the names and keys of a run without the sweep."""
        base = self.cfg.segmentation.synthetic_ratio
        return [None if r == base else float(r) for r in self.cfg.experiment.synthetic_ratios] or [None]

    def augmentation_only(self) -> frozenset[str]:
        """Generators whose images are real slices only transformed (e.g. `warp`): arms that add no new images."""
        return frozenset(name for name in self.cfg.experiment.generators if REGISTRY[name].augmentation_only)


# ------------------------------------------------------------------------------------------------ stages
def prepare(run: Run) -> dict[str, Any]:
    from data.cache import prepare_cases, voxel_sha1
    from data.layouts import list_cases
    from data.phantom import PHANTOM_VERSION, write_phantom
    from data.splits import duplicate_patients, make_split, write_split

    cfg, log = run.cfg, get_logger()
    stage_dir = run.stage_dir("prepare")
    if not cfg.data.root:
        key = stable_hash("phantom", PHANTOM_VERSION, cfg.data.phantom_patients, cfg.data.phantom_seed)
        execute(run, [Unit("phantom", stage_dir / "phantom", key, lambda d: {"patients": len(
            write_phantom(d, n_patients=cfg.data.phantom_patients, seed=cfg.data.phantom_seed,
                          workers=cfg.data.preprocess_workers))})])
        log.info(f"phantom: {cfg.data.phantom_patients} patients in {run.data_root}")
    refs = list_cases(run.data_root, cfg.data.layout)
    test_refs = list_cases(run.test_root, cfg.data.layout) if cfg.data.test_root else []
    strata = {r.patient_id: str(r.metadata.get(cfg.data.split.stratify_by, ""))
              for r in refs} if cfg.data.split.stratify_by else None
    hashes: dict[str, list[str]] = {}
    for ref in refs:
        hashes.setdefault(ref.patient_id, []).append(voxel_sha1(ref.image_path))
    linked = duplicate_patients(hashes)
    for group in linked:
        log.warning(f"patients {', '.join(sorted(group))} have voxel-identical images: kept on one side of the "
                    f"split")
    split = make_split(sorted({r.patient_id for r in refs}), cfg.data.split,
                       test_patient_ids=sorted({r.patient_id for r in test_refs}) or None, strata=strata,
                       fractions=cfg.experiment.fractions, linked=linked, draws=cfg.experiment.draws,
                       outer_folds=cfg.experiment.outer_folds)
    write_split(stage_dir / "splits.json", split)
    tested = set(split.test)
    # as prepare_key, with the content of the files a training or validation unit may read for their mtimes (the
    # units hold their own patients, so the split and the draws stay out, as before)
    data_key = stable_hash(result_settings(cfg.data), cfg.experiment.fractions,
                           [content_key(r, cfg.data.preprocess, cfg.data.label_map) for r in refs
                            if r.patient_id not in tested])
    if cfg.evaluate.sealed:  # a sealed test set is not preprocessed (its masks are never opened) until --unseal
        refs, test_refs = [r for r in refs if r.patient_id not in set(split.test)], []
    cases = prepare_cases(refs + test_refs, cfg.data.preprocess, stage_dir / "cache", label_map=cfg.data.label_map,
                          workers=cfg.data.preprocess_workers)
    log.info(f"prepared {len(cases)} cases: {len(split.train)} train / {len(split.val)} val / "
             f"{len(split.test)} test patients")
    extra = {}
    for test_set in cfg.data.extra_test_sets:
        if not test_set.root:
            key = stable_hash("phantom", PHANTOM_VERSION, test_set.phantom_patients, test_set.phantom_seed,
                              test_set.phantom_style)
            execute(run, [Unit(f"extra/{test_set.name}/phantom", run.extra_root(test_set), key,
                               lambda d, t=test_set: {"patients": len(write_phantom(
                                   d, n_patients=t.phantom_patients, seed=t.phantom_seed, style=t.phantom_style,
                                   workers=cfg.data.preprocess_workers))})])
        if not cfg.evaluate.sealed:
            extra[test_set.name] = len(run.extra_cases(test_set))
            log.info(f"extra test set {test_set.name!r}: {extra[test_set.name]} cases from {run.extra_root(test_set)}")
    return {"n_cases": len(cases), "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
            "extra_test_sets": extra, "data_key": data_key}


def content_key(ref: CaseRef, preprocess: Any, label_map: dict[int, int] | None) -> tuple[str, str]:
    """(case id, hash of its files' bytes and the preprocessing settings): the case store's own key."""
    from data.cache import cache_key

    return ref.case_id, cache_key(ref, preprocess, label_map)


def prepare_key(run: Run) -> str:
    """Whether prepare must run again: config of the data section + the input files (path, size, mtime), cheap
    to compute before running and without reading a file. The units downstream are keyed on the content instead
    (`Run.data_key`), so a new mtime costs only this stage."""
    from data.layouts import list_cases

    files = []
    cfg = run.cfg.data
    roots = [(cfg.root, cfg.layout)] + ([(cfg.test_root, cfg.layout)] if cfg.test_root else []) if cfg.root else []
    roots += [(t.root, t.layout) for t in cfg.extra_test_sets if t.root]
    for root, layout in roots:
        for ref in list_cases(Path(root), layout):
            for path in (ref.image_path, ref.mask_path):
                if path is not None:
                    stat = Path(path).stat()
                    files.append((str(path), stat.st_size, stat.st_mtime_ns))
    return stable_hash(result_settings(cfg), run.cfg.experiment.fractions, files, "content-keyed units")


def train_generator(run: Run) -> dict[str, Any]:
    return execute(run, plan_generators(run))


def plan_generators(run: Run) -> list[Unit]:
    """One unit per training subset x generator, fitted on that subset's patients only."""
    from synthesis.base import build_generator

    units = []
    for fraction, draw in run.subsets():
        patients = run.fraction_patients(fraction, draw)  # this draw's patients only
        cases = run.patient_cases(patients)
        for name in run.cfg.experiment.generators:
            gen_cfg = run.cfg.synthesis.generator_config(name)
            learned = REGISTRY[name].learned

            def compute(unit_dir: Path, name=name, gen_cfg=gen_cfg, cases=cases, learned=learned) -> dict[str, Any]:
                masks = np.concatenate([c.mask for c in cases])
                images = np.concatenate([c.image for c in cases])
                generator = build_generator(name, gen_cfg)
                figures = generator.fit(masks, images, unit_dir, seed=run.cfg.synthesis.seed,
                                        dist=run.train_context())
                made = GeneratorArtifact(learned=learned)
                if run.ctx.is_main or run.mode == "sweep":
                    generator.save(unit_dir / made.path)
                return with_artifact(made, dict(figures or {}, slices=int(len(masks))))

            unit = f"{subset_dir(fraction, draw)}/{name}"
            key = stable_hash(run.data_key, patients, name, result_settings(gen_cfg), run.cfg.synthesis.seed)
            get_logger().info(f"train_generator {unit}: {len(cases)} cases, {sum(len(c.mask) for c in cases)} slices")
            units.append(Unit(unit, run.stage_dir("train_generator") / unit, key, compute, shared=True, ddp=learned))
    return units


def synthesize(run: Run) -> dict[str, Any]:
    """Per training subset x generator: synthetic volumes from that subset's masks (drawn as synthesis.masks
    says), written in the ACDC layout and preprocessed once, so the segmenters only read them."""
    from synthesis.base import load_generator
    from synthesis.masks import draw_masks
    from synthesis.synthesize import synthesize_dataset

    scfg = run.cfg.synthesis
    generated = read_json(run.stage_dir("train_generator") / MANIFEST)["results"]
    units = []
    for fraction, draw in run.subsets():
        cases = run.patient_cases(run.fraction_patients(fraction, draw))
        for name in run.cfg.experiment.generators:
            unit = f"{subset_dir(fraction, draw)}/{name}"

            def compute(unit_dir: Path, unit=unit, name=name, cases=cases) -> dict[str, Any]:
                generator = load_generator(artifact(run, "train_generator", unit, GeneratorArtifact).path)
                draws, rejects = draw_masks(scfg.masks.source_mix, cases, scfg.n_volumes, seed=scfg.seed,
                                            cfg=scfg.masks)
                made = SyntheticSet()
                manifest = synthesize_dataset(generator, draws, unit_dir / made.cases_dir, seed=scfg.seed,
                                              generator_name=name)
                prepare_synthetic(run, unit_dir / made.cases_dir, unit_dir / made.cache_dir)
                return with_artifact(made, {"n_volumes": int(len(manifest)), "rejects": rejects.as_dict()})

            key = stable_hash(generated[unit]["key"], scfg.seed, scfg.n_volumes, result_settings(scfg.masks))
            units.append(Unit(unit, run.stage_dir("synthesize") / unit, key, compute, shared=True, ddp=False))
    return execute(run, units)


def prepare_synthetic(run: Run, cases_dir: Path, cache_dir: Path) -> list[PreparedCase]:
    """Synthetic volumes through the real cases' preprocessing, cached next to them."""
    from data.cache import prepare_cases
    from data.layouts import list_cases

    return prepare_cases(list_cases(cases_dir, "acdc"), run.cfg.data.preprocess, cache_dir)


def synthetic_cases(run: Run, fraction: float, generator: str, draw: int = 0) -> list[PreparedCase]:
    """The synthetic volumes of one synthesize unit, preprocessed (`SyntheticSet`); for a mixture 'a+b', the
    volumes of every part (their case names start with `synth_<generator>_`, so they never collide)."""
    if "+" in generator:
        return [case for part in generator.split("+") for case in synthetic_cases(run, fraction, part, draw)]
    made = artifact(run, "synthesize", f"{subset_dir(fraction, draw)}/{generator}", SyntheticSet)
    return prepare_synthetic(run, Path(made.cases_dir), Path(made.cache_dir))


def synthetic_key(synthesized: dict[str, Any], seg: Segmenter) -> str | None:
    """The key of the synthetic data a segmenter trains on: its synthesize unit's, or all of a mixture's parts'."""
    if not seg.generator:
        return None
    keys = [synthesized[f"{subset_dir(seg.fraction, seg.draw)}/{part}"]["key"] for part in seg.generator.split("+")]
    return keys[0] if len(keys) == 1 else stable_hash(*keys)


def train_segmenters(run: Run) -> dict[str, Any]:
    """Every segmenter of the sweep; those that filter their synthetic slices (`Segmenter.judge`) after the rest,
    so that their judges are trained whichever process (sweep mode) trains them."""
    units, judged = plan_segmenters(run)
    return {**execute(run, [u for u in units if u.name not in judged]),
            **execute(run, [u for u in units if u.name in judged])}


def plan_segmenters(run: Run) -> tuple[list[Unit], set[str]]:
    """(one unit per segmenter of the sweep (`Run.segmenters`), the names of those that need a judge)."""
    from segmentation.train import train_segmenter

    synth = read_json(run.stage_dir("synthesize") / MANIFEST)["results"] if any(
        s.generator for s in run.segmenters()) else {}
    val_cases = run.patient_cases(run.split["val"])
    units, judged = [], set()
    for seg in run.segmenters():
        real_cases = run.patient_cases(run.fraction_patients(seg.fraction, seg.draw))
        seg_cfg = seg.config(run.cfg.segmentation)

        def compute(unit_dir: Path, seg=seg, seg_cfg=seg_cfg, real_cases=real_cases) -> dict[str, Any]:
            synthetic = synthetic_cases(run, seg.fraction, seg.generator, seg.draw) if seg.generator else None
            if seg.judge(run.cfg.segmentation) is not None:
                synthetic = judged_synthetic(run, seg, synthetic, unit_dir)
            result = train_segmenter(seg.arm, real_cases, val_cases, seg_cfg, unit_dir, synthetic_cases=synthetic,
                                     seed=seg.seed, preprocess=run.cfg.data.preprocess, dist=run.train_context())
            made = SegmenterArtifact(best_checkpoint=str(Path(result.best_checkpoint).relative_to(unit_dir)),
                                     metrics_csv=str(Path(result.metrics_csv).relative_to(unit_dir)))
            figures = {k: v for k, v in dataclasses.asdict(result).items() if not isinstance(v, Path)}
            return with_artifact(made, figures)  # paths only in the artifact, relative to the unit folder

        units.append(Unit(seg.name, run.stage_dir("train_segmenters") / seg.name, segmenter_key(run, synth, seg),
                          compute, shared=True))
        if seg.judge(run.cfg.segmentation) is not None:
            judged.add(seg.name)
    return units, judged


def segmenter_key(run: Run, synthesized: dict[str, Any], seg: Segmenter) -> str:
    """Its training patients, validation patients, identity, result settings (the real arm's without the
    synthetic-only ones: tuning the synthetic share never retrains the baseline), synthetic data and judge."""
    settings = result_settings(seg.config(run.cfg.segmentation))
    if seg.arm == "real":
        settings = {k: v for k, v in settings.items() if k not in synthetic_only(SegmentationConfig)}
    judge = seg.judge(run.cfg.segmentation)
    return stable_hash(run.data_key, run.fraction_patients(seg.fraction, seg.draw), run.split["val"],
                       seg.identity(), settings, synthetic_key(synthesized, seg),
                       *([segmenter_key(run, synthesized, judge)] if judge else []))


def judged_synthetic(run: Run, seg: Segmenter, synthetic: list[PreparedCase], unit_dir: Path) -> list[PreparedCase]:
    """The synthetic slices `seg`'s judge (a real-arm segmenter trained before it) segments well enough
    (`segmentation.synthetic_filter`); the judge's score of every slice in unit_dir/synthetic_filter.csv."""
    from segmentation.filtering import filter_synthetic
    from segmentation.model import load_model

    judge = seg.judge(run.cfg.segmentation)
    model, _ = load_model(artifact(run, "train_segmenters", judge.name, SegmenterArtifact).best_checkpoint)
    kept, marked = filter_synthetic(model, synthetic, seg.config(run.cfg.segmentation).synthetic_filter,
                                    unit_dir / "synthetic_filter.csv")
    dropped = marked.loc[~marked["kept"], "dice"]
    get_logger().info(f"{seg.name}: {len(dropped)} of {len(marked)} synthetic slices dropped, those the judge "
                      f"{judge.name} segments worst (2D Dice <= {dropped.max():.3f})"
                      if len(dropped) else f"{seg.name}: no synthetic slice dropped")
    return kept


def evaluate(run: Run) -> dict[str, Any]:
    """Every segmenter on the held-out test patients (per_case.csv, the experiment's answer) and on each extra
    test set (per_case_extra.csv, robustness.csv: the same comparisons per shifted domain). With a sealed test
    set (evaluate.sealed, no --unseal), on the validation patients instead, in units of their own (evaluate/
    sealed_val/), and no extra test set: the same tables, read as validation results."""
    from data.io import write_csv
    from segmentation.evaluate import evaluate_cases, summarize
    from segmentation.model import load_model
    from segmentation.selection import select_variants
    from segmentation.statistics import compare_to_real, draw_table, robustness_table, seed_table

    stage_dir = run.stage_dir("evaluate")
    trained = read_json(run.stage_dir("train_segmenters") / MANIFEST)["results"]
    scored = "test" if run.test_open else "val"
    units_dir = stage_dir if run.test_open else stage_dir / "sealed_val"
    extra_sets = {t.name: (run.extra_cases(t), t.label_map) for t in run.cfg.data.extra_test_sets} \
        if run.test_open else {}
    units, segmenters = [], run.segmenters()
    for seg in segmenters:
        scored_patients = run.test_patients(seg.fraction, seg.draw) if run.test_open else run.split["val"]
        test_sets = {"": (run.patient_cases(scored_patients), run.cfg.data.label_map), **extra_sets}

        def compute(unit_dir: Path, seg=seg, test_sets=test_sets) -> dict[str, Any]:
            model, _ = load_model(artifact(run, "train_segmenters", seg.name, SegmenterArtifact).best_checkpoint)
            extra = []
            for name, (cases, label_map) in test_sets.items():
                frame = evaluate_cases(model, cases, unit_dir / "predictions" / name, arm=seg.arm,
                                       fraction=seg.fraction, seed=seg.seed, label_map=label_map,
                                       workers=run.cfg.evaluate.workers)
                frame.insert(1, "generator", seg.generator)
                frame.insert(2, "augmentation", seg.augmentation)
                if name:
                    extra.append(frame.assign(test_set=name))
                else:
                    write_csv(frame, unit_dir / SCORED[0])
            write_csv(pd.concat(extra, ignore_index=True) if extra else pd.DataFrame(columns=["test_set"]),
                      unit_dir / SCORED[1])
            return {"rows": int(sum(len(c) for c, _ in test_sets.values()))}

        key = stable_hash(trained[seg.name]["key"], scored_patients, result_settings(run.cfg.data.extra_test_sets),
                          run.data_key, run.test_key) if run.test_open else \
            stable_hash(trained[seg.name]["key"], run.split["val"], "sealed", run.data_key)
        units.append(Unit(seg.name, units_dir / seg.name, key, compute))
    execute(run, units)
    frames = {name: [with_share(with_draw(read_table(unit.folder / name), seg.draw), seg.share(run.cfg.segmentation))
                     for unit, seg in zip(units, segmenters)] for name in SCORED}
    status = segmenter_status(run)
    variants = with_status(pd.concat(frames[SCORED[0]], ignore_index=True), status)
    exp = run.cfg.experiment
    per_case, selection = select_variants(variants, select_on=exp.select_on,
                                          default=float(run.cfg.segmentation.synthetic_ratio))
    if exp.synthetic_ratios:  # every value tried, and which one each result uses (chosen on validation)
        write_csv(variants, stage_dir / "variants.csv")
        write_csv(selection, stage_dir / "selection.csv")
    write_csv(per_case, stage_dir / "per_case.csv")
    write_csv(summarize(per_case), stage_dir / "summary.csv")
    write_csv(compare_to_real(per_case, n_boot=exp.bootstrap_samples, real_dice_floor=exp.real_dice_floor,
                              augmentation_only=run.augmentation_only()), stage_dir / "statistics.csv")
    write_csv(seed_table(per_case), stage_dir / "seeds.csv")
    write_csv(draw_table(per_case, n_boot=exp.bootstrap_samples, real_dice_floor=exp.real_dice_floor),
              stage_dir / "draws.csv")
    extra = with_status(pd.concat(frames[SCORED[1]], ignore_index=True), status)
    if len(extra) and len(selection):  # the extra test sets see the segmenters chosen on validation, too
        extra = extra.merge(per_case[STATUS_KEYS].drop_duplicates(), on=STATUS_KEYS, how="inner")
    write_csv(extra, stage_dir / "per_case_extra.csv")
    write_csv(robustness_table(per_case, extra, n_boot=exp.bootstrap_samples,
                               primary="test (in-domain)" if run.test_open else "validation (test set sealed)"),
              stage_dir / "robustness.csv")
    return {"rows": int(len(per_case)), "extra_rows": int(len(extra)), "scored": scored}


SCORED = ("per_case.csv", "per_case_extra.csv")  # what an evaluate unit writes: its test set, its extra sets
STATUS_KEYS = ["fraction", "draw", "arm", "generator", "augmentation", "synthetic_ratio", "seed"]


def with_draw(frame: pd.DataFrame, draw: int) -> pd.DataFrame:
    """A unit's table with its draw as a column after `fraction`: added when tables are gathered, so a unit's
    own files (and a cached unit of a run from before draws existed) stay as they are."""
    frame = frame.copy()
    frame.insert(frame.columns.get_loc("fraction") + 1 if "fraction" in frame else 0, "draw", int(draw))
    return frame


def with_share(frame: pd.DataFrame, share: float) -> pd.DataFrame:
    """A unit's table with its segmenter's synthetic share (`Segmenter.share`) as a column after
    `augmentation`, added when tables are gathered (like `with_draw`)."""
    frame = frame.copy()
    frame.insert(frame.columns.get_loc("augmentation") + 1 if "augmentation" in frame else len(frame.columns),
                 "synthetic_ratio", float(share))
    return frame


def segmenter_status(run: Run) -> pd.DataFrame:
    """Per segmenter: its final validation Dice and whether its validation curve had flattened
    (`segmentation.train.convergence`, read from its metrics.csv with the experiment's plateau settings)."""
    from segmentation.train import read_convergence

    exp, rows = run.cfg.experiment, []
    for seg in run.segmenters():
        state = read_convergence(artifact(run, "train_segmenters", seg.name, SegmenterArtifact).metrics_csv,
                                 exp.plateau_window, exp.plateau_min_delta)
        rows.append({"fraction": float(seg.fraction), "draw": int(seg.draw), "arm": seg.arm, "generator": seg.generator,
                     "augmentation": seg.augmentation, "synthetic_ratio": seg.share(run.cfg.segmentation),
                     "seed": int(seg.seed), "converged": state.converged,
                     "final_val_dice": state.final_val_dice,
                     "best_val_dice": state.best_val_dice, "val_dice_recent_gain": state.recent_gain})
    return pd.DataFrame(rows, columns=STATUS_KEYS + ["converged", "final_val_dice", "best_val_dice",
                                                     "val_dice_recent_gain"])


def with_status(per_case: pd.DataFrame, status: pd.DataFrame) -> pd.DataFrame:
    """`per_case` with each row's segmenter status (columns of `segmenter_status`) joined on."""
    if per_case.empty:
        return per_case
    frame = with_conditions(per_case).assign(fraction=per_case["fraction"].astype(float),
                                             seed=per_case["seed"].astype(int))
    return frame.merge(status, on=STATUS_KEYS, how="left", validate="many_to_one")


def quality(run: Run) -> dict[str, Any]:
    """Per fraction: every generator's synthetic images judged by the real arm's segmenter (first seed) on the
    validation patients' masks (quality.csv; closest-pair and style grids for the report)."""
    from data.io import write_csv
    from segmentation.model import load_model
    from synthesis.base import load_generator, save_sample_grid
    from synthesis.quality import build_reference, evaluate_generator, reference_row, save_pairs_grid

    stage_dir, qcfg = run.stage_dir("quality"), run.cfg.quality
    trained = read_json(run.stage_dir("train_segmenters") / MANIFEST)["results"]
    generated = read_json(run.stage_dir("train_generator") / MANIFEST)["results"]
    val_cases = run.patient_cases(run.split["val"])
    planned = []
    for fraction, draw in run.subsets():
        judge = Segmenter(fraction, "real", "", run.cfg.experiment.seeds[0], run.real_augmentations[0], draw)
        folder = subset_dir(fraction, draw)
        units = {name: f"{folder}/{name}" for name in run.cfg.experiment.generators}

        def compute(unit_dir: Path, fraction=fraction, judge=judge, units=units) -> dict[str, Any]:
            model, _ = load_model(artifact(run, "train_segmenters", judge.name, SegmenterArtifact).best_checkpoint)
            made = QualityArtifact()
            train_cases = run.patient_cases(run.fraction_patients(fraction, judge.draw))
            reference = build_reference(model, val_cases, train_cases, qcfg)
            rows = [reference_row(reference).row]
            for name, unit in units.items():
                generator = load_generator(artifact(run, "train_generator", unit, GeneratorArtifact).path)
                result = evaluate_generator(generator, reference, name)
                rows.append(result.row)
                save_pairs_grid(unit_dir / made.figure("pairs", name), result.images, reference.index.images, result.pairs,
                                title=f"{name}: closest synthetic / real-training pairs")
                if result.style_samples is not None:
                    save_sample_grid(unit_dir / made.figure("styles", name), reference.diversity_masks,
                                     {f"style {i}": s for i, s in enumerate(result.style_samples)},
                                     title=f"{name}: one held-out mask per column, one style seed per row")
            frame = pd.DataFrame(rows)
            frame.insert(0, "fraction", fraction)
            frame.insert(2, "judge", judge.name)
            write_csv(frame, unit_dir / made.table)
            return with_artifact(made, {"rows": len(frame), "flagged": frame.loc[
                frame["memorisation_flagged"].astype(bool), "generator"].tolist()})

        key = stable_hash(trained[judge.name]["key"], [generated[u]["key"] for u in units.values()],
                          run.split["val"], result_settings(qcfg))
        unit_name = quality_unit(fraction, draw)
        planned.append((Unit(unit_name, stage_dir / unit_name, key, compute, shared=True, ddp=False), draw))
    results = execute(run, [unit for unit, _ in planned])
    if not run.ctx.is_main:  # a sweep's other processes did their units; rank 0 writes the table
        return {}
    frames = []
    for unit, draw in planned:
        for name in results[unit.name].get("flagged", []):
            get_logger().warning(f"quality: generator {name!r} at {unit.name} is flagged as memorising its "
                                 f"training images (see quality/quality.csv)")
        made = QualityArtifact(**results[unit.name].get("artifact", {}))
        frames.append(with_draw(read_table(unit.folder / made.table), draw))
    table = pd.concat(frames, ignore_index=True)
    write_csv(table, stage_dir / "quality.csv")
    return {"rows": int(len(table))}


def report(run: Run) -> dict[str, Any]:
    paths = write_report(run)
    return {k: str(v) for k, v in paths.items()}


STAGE_FUNCTIONS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "prepare": prepare, "train_generator": train_generator, "synthesize": synthesize,
    "train_segmenters": train_segmenters, "evaluate": evaluate, "quality": quality, "report": report,
}


def stage_config(run: Run, stage: str) -> Any:
    """The config section(s) a stage's key is made of (its inputs are the upstream keys)."""
    cfg = run.cfg
    settings = result_settings  # runtime settings (data.settings) enter no key: flipping one re-runs nothing
    return {
        "prepare": lambda: settings(cfg.data),
        "train_generator": lambda: {"synthesis": settings(cfg.synthesis), "generators": cfg.experiment.generators},
        "synthesize": lambda: settings(cfg.synthesis),
        "train_segmenters": lambda: {"segmentation": settings(cfg.segmentation),
                                     "experiment": settings(cfg.experiment)},
        "evaluate": lambda: {"experiment": settings(cfg.experiment),
                             "extra_test_sets": settings(cfg.data.extra_test_sets),
                             **({"scored": "test" if run.test_open else "val"} if cfg.evaluate.sealed else {})},
        "quality": lambda: {"quality": settings(cfg.quality), "experiment": settings(cfg.experiment)},
        "report": lambda: {"profile": cfg.profile,
                           **({"unsealed": len(unsealings(run.run_dir))} if cfg.evaluate.sealed else {})},
    }[stage]()


UPSTREAM = {"prepare": (), "train_generator": ("prepare",), "synthesize": ("train_generator",),
            "train_segmenters": ("prepare", "synthesize"), "evaluate": ("train_segmenters",),
            "quality": ("train_generator", "train_segmenters"), "report": ("evaluate", "quality")}


def stage_key(run: Run, stage: str) -> str:
    if stage == "prepare":  # the draws are drawn by prepare but enter no unit key (each unit holds its patients)
        files = prepare_key(run)
        draws, folds = run.cfg.experiment.draws, run.cfg.experiment.outer_folds
        return files if draws == folds == 1 else stable_hash(
            files, {"draws": draws, **({"outer_folds": folds} if folds > 1 else {})})
    return stable_hash(stage, stage_config(run, stage), upstream_keys(run, stage))


def upstream_keys(run: Run, stage: str) -> dict[str, str]:
    """Keys of the upstream stages this run has (a real-only sweep has no synthesis stages)."""
    return {u: run.keys[u] for u in UPSTREAM[stage] if u in run.keys}


def needed_stages(cfg: PipelineConfig) -> list[str]:
    """A real-only sweep has no synthesis stages. The quality stage needs generators, the real arm (its
    segmenter judges the images) and `quality.enabled`; with arms [real] and generators listed, the generators
    are trained and judged without synthesising data sets or training on them (a quality-only study)."""
    exp = cfg.experiment
    uses_synthesis = any(arm != "real" for arm in exp.arms)
    judged = bool(exp.generators) and "real" in exp.arms and cfg.quality.enabled
    skip = set() if uses_synthesis else {"synthesize"}
    if not (uses_synthesis or judged):
        skip.add("train_generator")
    if not judged:
        skip.add("quality")
    return [s for s in STAGES if s not in skip]


def record_unsealing(run: Run, scored: bool) -> None:
    """Append this `--unseal` to RUN_DIR/unsealed.json: UTC time, a hash of the config (what was run, no git
    needed), the evaluate key and whether the test patients were scored now (False: an earlier scoring of the
    same config was shown again). A published number can then show it came from one look."""
    from datetime import datetime, timezone

    from pipeline.cache import write_json

    record = {"time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "config_hash": stable_hash({k: v for k, v in to_dict(run.cfg).items() if k != "run_dir"}),
              "evaluate_key": run.keys["evaluate"], "test_patients": len(run.split["test"]), "scored_now": scored}
    records = unsealings(run.run_dir) + [record]
    write_json(run.run_dir / UNSEALED, records)
    get_logger().warning(f"test set unsealed: scored {'now' if scored else 'before (cached)'}, recorded in "
                         f"{run.run_dir / UNSEALED} ({len(records)} unsealing(s) so far)")


def run_pipeline(cfg: PipelineConfig, *, stages: list[str] | None = None, force: tuple[str, ...] = (),
                 unseal: bool = False) -> Run:
    """Run (or resume) the stages in order; a current stage is skipped, a stale or forced one re-runs.

    Under torchrun every process calls this: the training stages use all of them (`launch.mode`), the other
    stages run on rank 0 while the rest wait, and only rank 0 writes manifests. After the last training
    stage the process group is closed and rank 0 goes on alone (evaluation, quality, report): MONAI's
    metrics would otherwise try to gather their buffers from processes that are not evaluating."""
    from segmentation.runtime import limit_threads, thread_budget

    log = get_logger()
    if unseal and not cfg.evaluate.sealed:
        raise ConfigError("--unseal scores a sealed test set, but evaluate.sealed is false: this run reads its test "
                          "patients anyway", keys=("evaluate.sealed",))
    run = Run(cfg=cfg, run_dir=Path(cfg.run_dir), ctx=distributed_context(cfg), unseal=unseal)
    check_patient_count(run)
    threads = limit_threads()
    log.info(f"torch threads: {threads} per process (budget {thread_budget()}: this process's cores / processes "
             f"on this machine; OMP_NUM_THREADS lowers it)")
    wanted = stages or needed_stages(cfg)
    needed = needed_stages(cfg)
    last = max((needed.index(s) for s in wanted if s in needed), default=len(needed) - 1)
    needed = needed[:last + 1]  # up to the last stage asked for, whether it runs or is already current
    for i, stage in enumerate(needed):
        if run.ctx.is_distributed and not set(needed[i:]) & set(SHARED_STAGES):
            from segmentation.runtime import shutdown_distributed

            run.ctx.barrier()
            shutdown_distributed()
            if not run.ctx.is_main:
                return run
            run.ctx = DistributedContext(device=run.ctx.device)
        stage_dir = run.stage_dir(stage)
        if stage in force and run.ctx.is_main:
            invalidate_stage(stage_dir)
        run.ctx.barrier()
        key = stage_key(run, stage)
        run.keys[stage] = key
        if stage_current(stage_dir, key) is not None:
            log.info(f"[{stage}] up to date, skipped")
            if stage == "evaluate" and run.unseal and run.ctx.is_main:
                record_unsealing(run, scored=False)
            continue
        if stage not in wanted:
            raise RuntimeError(f"stage {stage!r} is needed by {wanted} but is not up to date; run it first "
                               f"(add it to --stages)")
        log.info(f"[{stage}] running" + (f" on {run.ctx.world_size} processes ({cfg.launch.mode})"
                                         if run.ctx.is_distributed and stage in SHARED_STAGES else ""))
        t0 = time.perf_counter()
        results = _run_stage(run, stage)
        wall = round(time.perf_counter() - t0, 2)
        run.timings[stage] = wall
        if run.ctx.is_main:
            write_stage_manifest(stage_dir, StageRecord(
                stage=stage, key=key, config=stage_config(run, stage),
                inputs=upstream_keys(run, stage), results=results, wall_s=wall))
            if stage == "evaluate" and run.unseal:
                record_unsealing(run, scored=True)
        run.ctx.barrier()
        log.info(f"[{stage}] done in {wall:.1f} s")
    return run


def check_patient_count(run: Run) -> None:
    """data.split against the patients there are, before any stage draws the phantom or reads an image: the
    phantom's count is data.phantom_patients, a dataset's comes from listing its folder (no file is opened)."""
    from data.layouts import list_cases
    from data.splits import check_split_sizes

    cfg = run.cfg.data
    if cfg.root:
        count, where, keys = len({r.patient_id for r in list_cases(run.data_root, cfg.layout)}), str(run.data_root), ()
    else:
        count, where, keys = cfg.phantom_patients, "the phantom (data.phantom_patients)", ("data.phantom_patients",)
    try:
        check_split_sizes(count, cfg.split, separate_test=bool(cfg.test_root), where=where)
    except ValueError as exc:
        raise ConfigError(str(exc), keys=("data.split.n_test", "data.split.n_val", *keys)) from None


def distributed_context(cfg: PipelineConfig) -> DistributedContext:
    """This process's place among torchrun's processes (a single-process context without torchrun)."""
    import os
    from datetime import timedelta

    from segmentation.runtime import init_distributed

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistributedContext()
    return init_distributed(cfg.segmentation.device, key="segmentation.device",
                            timeout=timedelta(minutes=cfg.launch.timeout_min))


def _run_stage(run: Run, stage: str) -> dict[str, Any]:
    stage_fn = STAGE_FUNCTIONS[stage]
    if not run.ctx.is_distributed:
        return stage_fn(run)
    try:
        if stage not in SHARED_STAGES:
            run.mode = "solo"
            return run.ctx.main_then_broadcast(lambda: stage_fn(run))
        run.mode = run.cfg.launch.mode  # how `execute` shares the stage's training units
        return stage_fn(run)
    finally:
        run.mode = "ddp"
