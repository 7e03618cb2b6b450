"""A setting's role is declared once, on its field (data.settings), and every key and resumption check reads it
(issue 18): flipping a runtime setting re-runs nothing; no key holds a runtime setting."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from data.settings import RESUMABLE, RUNTIME, names_with_role, result_settings, role
from pipeline.config import PipelineConfig, describe
from pipeline.run import STAGES, Run, run_pipeline, stage_config
from tests.pipeline.test_run import done_stamps, tiny_config

REPO = Path(__file__).resolve().parents[2]


def flipped(section):
    """`section` with every runtime setting, at every depth, set to another valid value."""
    changes = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            changes[f.name] = flipped(value)
        elif role(f) == RUNTIME:
            choices = f.metadata.get("choices")
            changes[f.name] = (not value if isinstance(value, bool) else
                               next(c for c in choices if c != value) if choices else value + 1)
    return dataclasses.replace(section, **changes)


def runtime_names(section) -> set[str]:
    names = set(names_with_role(section, RUNTIME))
    for f in dataclasses.fields(section):
        if dataclasses.is_dataclass(getattr(section, f.name)):
            names |= runtime_names(getattr(section, f.name))
    return names


def keys_in(plain) -> set[str]:
    if isinstance(plain, dict):
        return set(plain) | {k for v in plain.values() for k in keys_in(v)}
    if isinstance(plain, list):
        return {k for v in plain for k in keys_in(v)}
    return set()


def test_no_stage_key_holds_a_runtime_setting_and_flipping_them_all_changes_none(tmp_path):
    cfg = PipelineConfig()
    other = flipped(cfg)
    assert runtime_names(cfg) >= {"device", "num_workers", "progress", "sample_every", "compile"}
    assert other != cfg
    for stage in STAGES:
        mine, theirs = (stage_config(Run(cfg=c, run_dir=tmp_path), stage) for c in (cfg, other))
        assert mine == theirs, stage
    assert not runtime_names(cfg) & keys_in(result_settings(cfg))  # at any depth


def test_resumable_settings_are_in_keys_but_let_a_checkpoint_go_on():
    from data.settings import resumable_differences

    spade = PipelineConfig().synthesis.spade
    assert {"steps", "collapse_patience"} <= names_with_role(spade, RESUMABLE)
    assert "steps" in result_settings(spade)
    saved = dataclasses.asdict(spade)
    assert resumable_differences(saved, dataclasses.replace(spade, steps=spade.steps * 2, device="cpu")) == []
    assert resumable_differences(saved, dataclasses.replace(spade, lr_g=spade.lr_g * 2)) == ["lr_g"]


def test_the_synthetic_share_is_declared_synthetic_only_and_is_a_result_setting():
    """The real arm leaves `synthetic_only` settings out of its key (declared on the field, not in a list)."""
    from data.settings import synthetic_only
    from segmentation.config import SegmentationConfig

    assert synthetic_only(SegmentationConfig) == {"synthetic_ratio", "synthetic_schedule", "synthetic_filter"}
    assert not synthetic_only(SegmentationConfig) & names_with_role(SegmentationConfig, RUNTIME)


def test_a_setting_added_later_leaves_keys_and_checkpoints_alone_at_its_default():
    """`keyed_unless_default` (segmentation.synthetic_schedule): at its default it enters no key and a checkpoint
    saved before it existed still resumes; set otherwise, it is a result setting like any other."""
    from data.settings import resumable_differences
    from segmentation.config import SegmentationConfig

    cfg = SegmentationConfig()
    assert "synthetic_schedule" not in result_settings(cfg)
    decay = dataclasses.replace(cfg, synthetic_schedule="linear_decay")
    assert result_settings(decay)["synthetic_schedule"] == "linear_decay"
    old = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "synthetic_schedule"}  # saved before it
    assert resumable_differences(old, cfg) == []
    assert resumable_differences(old, decay) == ["synthetic_schedule"]


def test_pipeline_yaml_marks_every_runtime_setting():
    base = (REPO / "pipeline.yaml").read_text().split("\nprofiles:")[0]
    marked = sum("# [runtime] " in line for line in base.splitlines())
    assert marked == sum(help_.startswith("[runtime] ") for _, help_, _ in describe())


def test_flipping_runtime_settings_re_runs_nothing(phantom_root, extra_sets, finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    manifests = {p: p.stat().st_mtime_ns for p in run_dir.glob("*/manifest.json")}
    before = done_stamps(run_dir)
    run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets, "quality.progress=false",
                             "segmentation.num_workers=1", "segmentation.device=cpu",
                             "synthesis.spade.progress=false", "synthesis.spade.sample_every=7"))
    assert done_stamps(run_dir) == before
    assert {p: p.stat().st_mtime_ns for p in run_dir.glob("*/manifest.json")} == manifests
