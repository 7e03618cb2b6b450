"""The typed configuration of a run, loaded from one YAML and validated in one place, before any work.

Each stage package owns the dataclass of its section (data.config, synthesis.config, segmentation.config);
this module composes them, applies the selected profile and `--set key=value` overrides, and checks every
key, type and value, naming the key and what is allowed. Field constraints come from the dataclass
fields' metadata: `min`, `max`, `choices`, `len`.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from data.config import DataConfig
from data.settings import RUNTIME, role
from pipeline.errors import ConfigError
from segmentation.config import AUGMENTATIONS, SegmentationConfig
from segmentation.datasets import ARMS
from segmentation.statistics import condition_label
from synthesis.base import REGISTRY
from synthesis.config import QualityConfig
from synthesis.generators import SynthesisConfig



@dataclass
class ExperimentConfig:
    fractions: list[float] = field(default_factory=lambda: [0.1, 1.0], metadata={
        "min_exclusive": 0.0, "max": 1.0, "help": "real-data fractions of the training patients (nested subsets)"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={
        "min_len": 1, "help": "segmenter seeds; every arm x fraction is trained once per seed"})
    draws: int = field(default=1, metadata={
        "min": 1, "max": 100,
        "help": "draws of the training patients per fraction: the whole study (generators, segmenters, "
                "evaluation) is repeated on each; draw 0 is the nested subset, later draws are disjoint from "
                "the earlier ones where the training patients allow, else independent seeded draws (prepare/"
                "splits.json says which)"})
    outer_folds: int = field(default=1, metadata={
        "min": 1, "max": 20,
        "help": "outer cross-validation of the test patients (no data.test_root): the patients outside "
                "validation are cut into this many stratified folds; draw k is tested on fold k mod outer_folds and "
                "trains on the other folds' patients (data.split.n_test is then not used; draws is raised to "
                "outer_folds where lower, so every fold is tested). 1 = one fixed test set"})
    arms: list[str] = field(default_factory=lambda: ["real", "real+synthetic"], metadata={
        "choices": list(ARMS), "min_len": 1, "help": "training arms; real+synthetic/synthetic run once per generator"})
    generators: list[str] = field(default_factory=lambda: ["spade", "gmm"], metadata={
        "help": "generators compared (names of the synthesis registry)"})
    mixtures: list[str] = field(default_factory=list, metadata={
        "help": "pooled synthetic sets such as 'gmm+cvae': the synthetic arms run once more on the union of those "
                "generators' volumes (each one listed in generators), e.g. to combine one generator's variety "
                "with another's realism"})
    augmentations: list[str] = field(default_factory=list, metadata={
        "choices": list(AUGMENTATIONS),
        "help": "segmenter augmentation settings compared side by side: every arm x generator x seed is trained "
                "once per entry (e.g. [standard, strong]); empty = segmentation.augmentation alone"})
    conditions: list[str] = field(default_factory=list, metadata={
        "help": "run only these conditions of augmentations x arms x generators, named as the report names them: "
                "'real', 'real [strong]', 'real+synthetic (gmm) [strong]', ...; each synthetic one needs the real arm "
                "of its augmentation (its reference). Empty = every condition"})
    segmentation_by_generator: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={
        "help": "segmentation settings of one generator's (or mixture's) segmenters where they differ from the "
                "segmentation section, e.g. {gmm: {synthetic_ratio: 0.2, synthetic_filter: 0.25}}; only settings "
                "the real arm never reads (synthetic_ratio, synthetic_schedule, synthetic_filter). A segmenter "
                "keeps the key it has with the same values set in the segmentation section"})
    synthetic_ratios: list[float] = field(default_factory=list, metadata={
        "min": 0.0, "max": 1.0,
        "help": "synthetic shares tried for every real+synthetic arm, each a segmenter of its own (e.g. [0.2, "
                "0.5]); empty = segmentation.synthetic_ratio alone. Which one a result uses is decided by "
                "select_on, never by the test patients"})
    select_on: str = field(default="val", metadata={
        "choices": ["val", "none"],
        "help": "how a swept knob (synthetic_ratios) gets its value, per fraction x draw x arm x generator x "
                "augmentation: val = the value whose segmenters reach the best validation Dice (mean over seeds; "
                "evaluate/selection.csv says what was chosen and on what); none = segmentation.synthetic_ratio, "
                "fixed in advance. Every value tried is still scored (evaluate/variants.csv), never chosen there"})
    bootstrap_samples: int = field(default=2000, metadata={"min": 100, "help": "bootstrap resamples for the CIs"})
    plateau_window: int = field(default=3, metadata={
        "min": 1, "max": 100,
        "help": "a segmenter counts as converged when its last this-many validations are on average less than "
                "plateau_min_delta above the best validation Dice before them (fewer validations: not converged)"})
    plateau_min_delta: float = field(default=0.01, metadata={
        "min": 0.0, "max": 1.0, "help": "validation Dice gain below which the curve counts as flat"})
    real_dice_floor: float = field(default=0.5, metadata={
        "min": 0.0, "max": 1.0,
        "help": "a real arm whose mean test Dice is below this is not a baseline worth comparing with: the report "
                "then flags every comparison with it instead of stating a gain or loss"})


@dataclass
class EvaluateConfig:
    """How the test patients are scored."""

    sealed: bool = field(default=False, metadata={
        "help": "seal the test set: the pipeline trains, validates and selects without reading a test patient's "
                "image or mask (only the duplicate-image check hashes images), evaluate and the report show "
                "validation results only; `cmr-synth run CONFIG --unseal` scores the test patients once and "
                "appends the time and config hash to RUN_DIR/unsealed.json"})
    workers: int = field(default=1, metadata={
        "role": "runtime", "min": 1, "max": 256,
        "help": "processes that score the test cases of each segmenter on the CPU (one thread each; the same tables "
                "as one process; a GPU scores in one)"})


@dataclass
class LaunchConfig:
    """How many processes run the training stages (PyTorch distributed, torchrun)."""

    nproc_per_node: int = field(default=1, metadata={
        "min": 1, "max": 256, "help": "processes on this machine: > 1 makes `cmr-synth run` start itself under "
                                      "`torchrun --standalone` (one process per GPU; gloo on CPU). Started by "
                                      "you under torchrun (e.g. --nnodes for several machines), this is ignored"})
    mode: str = field(default="ddp", metadata={
        "choices": ["ddp", "sweep"],
        "help": "ddp: every generator/segmenter trains on all processes (DistributedDataParallel, the global "
                "batch split between them); sweep: the independent units (fraction x arm x seed, generators and "
                "their synthetic sets) are spread over the processes, each done by one process on its own GPU"})
    timeout_min: float = field(default=720.0, metadata={
        "min_exclusive": 0.0, "help": "minutes a process waits for the others (e.g. while rank 0 evaluates)"})


@dataclass
class PipelineConfig:
    run_dir: str = field(default="runs/quick", metadata={"help": "where every stage writes its outputs"})
    profile: str = field(default="quick", metadata={"help": "profile of the YAML applied over the base settings"})
    data: DataConfig = field(default_factory=DataConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)


# ----------------------------------------------------------------------------------------------- loading
def load_config(path: Path | str | None = None, *, profile: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """YAML (base keys + `profiles:`) -> profile merged over the base -> `--set` overrides -> validated config."""
    source = str(path) if path else "<defaults>"
    raw: dict[str, Any] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    profiles = raw.pop("profiles", {}) or {}
    if not isinstance(profiles, dict):
        raise ConfigError(f"{source}: 'profiles' must map profile names to settings")
    chosen = profile or raw.get("profile")
    if chosen is not None:
        if chosen not in profiles:
            raise ConfigError(f"{source}: unknown profile {chosen!r}; profiles in this file: {sorted(profiles)}")
        raw = deep_merge(raw, profiles[chosen] or {})
        raw["profile"] = chosen
    for item in overrides:
        raw = deep_merge(raw, parse_override(item))
    try:
        cfg = from_mapping(PipelineConfig, raw, prefix="", source=source)
        check_consistency(cfg, source)
    except ConfigError as exc:
        raise blame(exc, source, overrides) from None
    return cfg


def blame(exc: ConfigError, source: str, overrides: list[str] | tuple[str, ...]) -> ConfigError:
    """`exc` named after where its key was set: the last `--set` that set one of its keys (or a section holding
    it, or a key inside it), else `source` (the YAML file) when it names no source yet."""
    for key in exc.keys:
        key = re.split(r"\[| \(", key)[0]  # experiment.generators[0], data.label_map (key 7) -> the key
        for item in reversed(overrides):
            name = item.split("=", 1)[0].strip()
            if key == name or key.startswith(f"{name}.") or name.startswith(f"{key}."):
                return exc.set_by(f"--set {item}")
    return exc if exc.source else exc.set_by(source)


def parse_override(item: str) -> dict[str, Any]:
    """'a.b.c=value' -> {'a': {'b': {'c': value}}}; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. segmentation.steps=500")
    key, value = item.split("=", 1)
    node: dict[str, Any] = {}
    out = node
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node[part] = {}
        node = node[part]
    try:
        node[parts[-1]] = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from exc
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# -------------------------------------------------------------------------------------------- validation
def from_mapping(cls: type, raw: Any, *, prefix: str, source: str):
    """Build dataclass `cls` from a mapping, rejecting unknown keys, wrong types and out-of-range values."""
    where = prefix.rstrip(".") or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _error(source, prefix.rstrip("."), f"{where} must be a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, raw)) - set(fields))
    if unknown:
        key = f"{prefix}{unknown[0]!s}"
        raise _error(source, key, f"unknown key {key}; allowed keys under {where}: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}{name}"
        kwargs[name] = _coerce(value, hints[name], key, source)
        _check_constraints(kwargs[name], fields[name].metadata, key, source)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, prefix=f"{key}.", source=source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(key, value, f"a list of {_name(args[0])}", source)
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, value, f"a mapping {_name(args[0])} -> {_name(args[1])}", source)
        return {_coerce(k, args[0], f"{key} (key {k!r})", source): _coerce(v, args[1], f"{key}.{k}", source)
                for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise _type_error(key, value, "true or false", source)
        return value
    if hint is int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)  # YAML mapping keys and --set values may arrive as text
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(key, value, "an integer", source)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(key, value, "a number", source)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _type_error(key, value, "a string", source)
        return value
    if hint is Any:
        return value
    raise _error(source, key, f"{key}: unsupported type {hint!r} in the config schema")  # a bug of ours


def _check_constraints(value: Any, meta: typing.Mapping[str, Any], key: str, source: str) -> None:
    if value is None or not meta:
        return
    if isinstance(value, list):
        if "len" in meta and len(value) != meta["len"]:
            raise _error(source, key, f"{key} must have exactly {meta['len']} values, got {value!r}")
        if "min_len" in meta and len(value) < meta["min_len"]:
            raise _error(source, key, f"{key} needs at least {meta['min_len']} value(s), got {value!r}")
        if len(set(map(repr, value))) != len(value) and meta.get("unique", True) and "len" not in meta:
            raise _error(source, key, f"{key} lists a value twice: {value!r}")
        for i, item in enumerate(value):
            _check_scalar(item, meta, f"{key}[{i}]", source)
    elif isinstance(value, dict):
        return
    else:
        _check_scalar(value, meta, key, source)


def _check_scalar(value: Any, meta: typing.Mapping[str, Any], key: str, source: str) -> None:
    if "choices" in meta and value not in meta["choices"]:
        raise _error(source, key, f"{key} = {value!r} is not allowed; choose one of {list(meta['choices'])}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "min" in meta and value < meta["min"]:
            raise _error(source, key, f"{key} = {value!r} is too small; allowed: >= {meta['min']}")
        if "min_exclusive" in meta and value <= meta["min_exclusive"]:
            raise _error(source, key, f"{key} = {value!r} is too small; allowed: > {meta['min_exclusive']}")
        if "max" in meta and value > meta["max"]:
            raise _error(source, key, f"{key} = {value!r} is too large; allowed: <= {meta['max']}")


def _type_error(key: str, value: Any, expected: str, source: str) -> ConfigError:
    return _error(source, key, f"{key} = {value!r} ({type(value).__name__}) has the wrong type; expected {expected}")


def _check_window(source: str, name: str, window: int, factor: int, crop: int, background: str) -> None:
    """synthesis.<name>.crop_px: heart-centred windows only where the real slice is kept around them, no larger
    than the slices, and divisible like a slice."""
    key = f"synthesis.{name}.crop_px"
    if background != "real":
        raise _error(source, (key, f"synthesis.{name}.background"),
                     f"{key} = {window} paints heart-centred windows into the real slice, which needs "
                     f"synthesis.{name}.background = 'real' (it is {background!r}); set it or crop_px to 0")
    if window > crop:
        raise _error(source, (key, "data.preprocess.crop_size"),
                     f"{key} = {window} is larger than the slices (data.preprocess.crop_size = {crop})")
    if window % factor:
        raise _error(source, key, f"{key} = {window} must be divisible by {factor} for generator {name!r} (its "
                                  f"downsampling depth, see synthesis.{name})")


def every_condition(cfg: PipelineConfig) -> list[tuple[str, str, str]]:
    """(arm, generator, augmentation) of augmentations x arms x generators (and mixtures); '' generator for the
    real arm."""
    exp = cfg.experiment
    return [(arm, generator, augmentation) for augmentation in exp.augmentations or [cfg.segmentation.augmentation]
            for arm in exp.arms for generator in ([""] if arm == "real" else exp.generators + exp.mixtures)]


def conditions(cfg: PipelineConfig) -> list[tuple[str, str, str]]:
    """The conditions the experiment runs: `every_condition`, less those experiment.conditions leaves out."""
    kept = set(cfg.experiment.conditions)
    return [c for c in every_condition(cfg) if not kept or condition_label(*c) in kept]


def _check_conditions(cfg: PipelineConfig, source: str) -> None:
    exp = cfg.experiment
    every = [condition_label(*c) for c in every_condition(cfg)]
    for i, label in enumerate(exp.conditions):
        if label not in every:
            raise _error(source, f"experiment.conditions[{i}]", f"experiment.conditions[{i}] = {label!r} is not a "
                                                                 f"condition of this experiment; choose from {every}")
    for arm, generator, augmentation in conditions(cfg):
        reference = condition_label("real", "", augmentation)
        if arm != "real" and exp.conditions and reference not in exp.conditions:
            raise _error(source, ("experiment.conditions", "experiment.arms"),
                         f"experiment.conditions runs {condition_label(arm, generator, augmentation)!r} without "
                         f"{reference!r}, the real arm it is compared with; add it")


def _check_by_generator(cfg: PipelineConfig, source: str) -> None:
    """experiment.segmentation_by_generator: known generators, settings only synthetic arms read, valid values."""
    from data.settings import synthetic_only

    exp, allowed = cfg.experiment, sorted(synthetic_only(SegmentationConfig))
    for name, settings in exp.segmentation_by_generator.items():
        key = f"experiment.segmentation_by_generator.{name}"
        if name not in exp.generators + exp.mixtures:
            raise _error(source, (key, "experiment.generators"),
                         f"{key}: {name!r} is not in experiment.generators {exp.generators} or experiment.mixtures "
                         f"{exp.mixtures}")
        unknown = sorted(set(settings) - set(allowed))
        if unknown:
            raise _error(source, f"{key}.{unknown[0]}", f"{key}.{unknown[0]}: only settings that the real arm never "
                                                         f"reads can differ per generator: {allowed}")
        from_mapping(SegmentationConfig, {**to_dict(cfg.segmentation), **settings}, prefix=f"{key}.", source=source)
        if "synthetic_ratio" in settings and exp.synthetic_ratios:
            raise _error(source, (f"{key}.synthetic_ratio", "experiment.synthetic_ratios"),
                         f"{key}.synthetic_ratio fixes the share that experiment.synthetic_ratios "
                         f"{exp.synthetic_ratios} sweeps; set one of them")


def _error(source: str, keys: str | tuple[str, ...], message: str) -> ConfigError:
    """A ConfigError about `keys` (the first is the one to blame), from `source` unless a --set gave it."""
    return ConfigError(message, source=source, keys=(keys,) if isinstance(keys, str) else keys)


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def check_consistency(cfg: PipelineConfig, source: str) -> None:
    """Rules that involve several keys (each field's own range is checked while loading)."""
    crop = cfg.data.preprocess.crop_size
    seg = cfg.segmentation
    if len(seg.strides) != len(seg.channels) - 1:
        raise _error(source, ("segmentation.strides", "segmentation.channels"),
                     f"segmentation.strides needs one value fewer than segmentation.channels "
                     f"({len(seg.channels)} channels -> {len(seg.channels) - 1} strides), got {seg.strides}")
    factor = int(np.prod(seg.strides))
    if crop % factor:
        raise _error(source, ("data.preprocess.crop_size", "segmentation.strides"),
                     f"data.preprocess.crop_size = {crop} must be divisible by the U-Net's "
                     f"downsampling factor {factor} (product of segmentation.strides); e.g. "
                     f"{crop - crop % factor or factor} or {crop - crop % factor + factor}")
    exp = cfg.experiment
    if exp.outer_folds > 1 and cfg.data.test_root:
        raise _error(source, ("experiment.outer_folds", "data.test_root"),
                     f"experiment.outer_folds = {exp.outer_folds} cross-validates the patients of data.root, but "
                     f"data.test_root gives a separate test set: set one of them")
    if exp.outer_folds > 1 and cfg.evaluate.sealed:
        raise _error(source, ("experiment.outer_folds", "evaluate.sealed"),
                     f"experiment.outer_folds = {exp.outer_folds}: every patient outside validation trains in some "
                     f"fold, so there is no test set to seal; set evaluate.sealed to false or outer_folds to 1")
    if exp.synthetic_ratios and "real+synthetic" not in exp.arms:
        raise _error(source, ("experiment.synthetic_ratios", "experiment.arms"),
                     f"experiment.synthetic_ratios {exp.synthetic_ratios} are synthetic shares of the real+synthetic "
                     f"arm, which experiment.arms {exp.arms} does not run")
    if len(set(exp.synthetic_ratios)) != len(exp.synthetic_ratios):
        raise _error(source, "experiment.synthetic_ratios",
                     f"experiment.synthetic_ratios {exp.synthetic_ratios} lists a value twice")
    if exp.select_on == "none" and exp.synthetic_ratios and seg.synthetic_ratio not in exp.synthetic_ratios:
        raise _error(source, ("experiment.select_on", "experiment.synthetic_ratios", "segmentation.synthetic_ratio"),
                     f"experiment.select_on = none keeps segmentation.synthetic_ratio = {seg.synthetic_ratio:g}, "
                     f"which experiment.synthetic_ratios {exp.synthetic_ratios} does not try; add it there")
    _check_conditions(cfg, source)
    _check_by_generator(cfg, source)
    filters = [("segmentation.synthetic_filter", seg.synthetic_filter)] + [
        (f"experiment.segmentation_by_generator.{name}.synthetic_filter", own["synthetic_filter"])
        for name, own in exp.segmentation_by_generator.items() if "synthetic_filter" in own]
    for key, value in filters:
        if value and "real" not in exp.arms:
            raise _error(source, (key, "experiment.arms"),
                         f"{key} = {value:g} drops the synthetic slices the real arm's segmenter segments worst, but "
                         f"experiment.arms {exp.arms} does not run the real arm; add it or set {key} to 0")
    needs_generators = any(arm != "real" for arm in cfg.experiment.arms)
    if needs_generators and not cfg.experiment.generators:
        raise _error(source, ("experiment.generators", "experiment.arms"),
                     f"experiment.arms {cfg.experiment.arms} need at least one entry in experiment.generators")
    for i, name in enumerate(cfg.experiment.generators):
        if name not in REGISTRY:
            raise _error(source, f"experiment.generators[{i}]", f"experiment.generators[{i}] = {name!r} is not a "
                                                                f"generator; choose from {sorted(REGISTRY)}")
    for i, mixture in enumerate(cfg.experiment.mixtures):
        parts = mixture.split("+")
        if len(parts) < 2 or len(set(parts)) != len(parts) or not set(parts) <= set(cfg.experiment.generators):
            raise _error(source, (f"experiment.mixtures[{i}]", "experiment.generators"),
                         f"experiment.mixtures[{i}] = {mixture!r}: expected two or more different generators "
                         f"joined by '+', each listed in experiment.generators {cfg.experiment.generators}")
    for name in cfg.experiment.generators:
        factor, gen = cfg.synthesis.size_divisor(name), cfg.synthesis.generator_config(name)
        window = getattr(gen, "crop_px", 0)
        if window:
            _check_window(source, name, window, factor, crop, gen.background)
        elif crop % factor:
            raise _error(source, ("data.preprocess.crop_size", f"synthesis.{name}"),
                         f"data.preprocess.crop_size = {crop} must be divisible by {factor} for generator {name!r} "
                         f"(its downsampling depth, see synthesis.{name})")
    from synthesis.masks import check_source_mix

    try:
        check_source_mix(cfg.synthesis.masks.source_mix)
    except ValueError as exc:
        raise _error(source, "synthesis.masks.source_mix", f"synthesis.masks.{exc}") from exc
    if cfg.synthesis.masks.source_mix.get("sampled", 0) > 0:
        for name in cfg.experiment.generators:
            needs = cfg.synthesis.generator_config(name).context_settings()
            if needs:
                key = needs[0]
                what, fix = ((f"synthesis.{name}.{key}", f"change synthesis.{name}.{key}") if key else
                             (f"generator {name!r}", f"remove {name!r} from experiment.generators"))
                keys = (f"synthesis.{name}.{key}" if key else "experiment.generators", "synthesis.masks.source_mix")
                raise _error(source, keys, f"{what} needs the real slice behind each mask, which masks sampled "
                                           f"from the shape model lack: set synthesis.masks.source_mix.sampled to 0 "
                                           f"or {fix}")
    names = [t.name for t in cfg.data.extra_test_sets]
    for i, name in enumerate(names):
        key = f"data.extra_test_sets[{i}].name"
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise _error(source, key, f"{key} = {name!r}: expected a non-empty name of letters, digits, '-', '_' "
                                      f"or '.' (it names a folder and a report row)")
        if names.index(name) != i:
            raise _error(source, key, f"{key} = {name!r} is used twice")
    if cfg.data.test_root is not None and not cfg.data.root:
        raise _error(source, ("data.test_root", "data.root"),
                     "data.test_root is set but data.root is empty; the phantom has no test root")
    from data.labels import validate_label_map

    maps = {"data.label_map": cfg.data.label_map}
    maps.update({f"data.extra_test_sets[{i}].label_map": t.label_map for i, t in enumerate(cfg.data.extra_test_sets)})
    for key, label_map in maps.items():
        try:
            validate_label_map(label_map)
        except ValueError as exc:  # "label_map[1] = 7: expected an internal label, one of 0 (background), ..."
            raise _error(source, key, f"{key.removesuffix('label_map')}{exc}") from None


def to_dict(cfg: Any) -> Any:
    """Plain data (for hashing, manifests, the report)."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg


def describe(cls: type = PipelineConfig, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(key, help, default) for every key: used to check that pipeline.yaml documents each one (a runtime
    setting's help starts with "[runtime] ", as its comment there does)."""
    rows = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(describe(hint, f"{prefix}{f.name}."))
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            rows.append((f"{prefix}{f.name}", ("[runtime] " if role(f) == RUNTIME else "") + f.metadata.get("help", ""),
                         default))
    return rows


def documented_yaml(cls: type = PipelineConfig, indent: int = 0) -> str:
    """The defaults as YAML with every key's help as a comment (how pipeline.yaml's base part was written)."""
    lines = []
    pad = "  " * indent
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        help_text = f.metadata.get("help", "")
        allowed = f.metadata.get("choices")
        comment = ("[runtime] " if role(f) == RUNTIME else "") + help_text + \
            (f" (one of: {', '.join(map(str, allowed))})" if allowed else "")
        if dataclasses.is_dataclass(hint):
            doc = (hint.__doc__ or "").strip().splitlines()[0] if hint.__doc__ else ""
            if doc and not doc.startswith(hint.__name__ + "("):
                lines.append(f"{pad}# {doc}")
            lines.append(f"{pad}{f.name}:")
            lines.append(documented_yaml(hint, indent + 1))
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        value = yaml.safe_dump(default, default_flow_style=True, width=1000).strip()
        if value.endswith("\n..."):
            value = value[: -len("\n...")]
        value = value.removesuffix("...").strip()
        lines.append(f"{pad}{f.name}: {value}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)
