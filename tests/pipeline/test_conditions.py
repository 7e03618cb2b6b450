"""experiment.conditions and experiment.segmentation_by_generator: a config that runs exactly the arms of a study
(issue 16), each generator with its own synthetic share or filter, reusing the units of runs that set the same
values for every generator."""
from __future__ import annotations

import json
import shutil

import pytest

from pipeline.config import ConfigError, conditions
from pipeline.run import run_pipeline
from tests.pipeline.test_run import done_stamps, tiny_config

STAGES = ["prepare", "train_generator", "synthesize", "train_segmenters"]


def unit_keys(run_dir) -> dict[str, str]:
    return {str(p.parent.relative_to(run_dir)): json.loads(p.read_text())["key"]
            for p in (run_dir / "train_segmenters").rglob("done.json")}


def test_a_generators_own_settings_give_the_units_of_the_same_settings_set_for_all(phantom_root, extra_sets,
                                                                                   finished, tmp_path):
    by_generator, for_all = tmp_path / "by_generator", tmp_path / "for_all"
    for run_dir in (by_generator, for_all):
        shutil.copytree(finished, run_dir)
    before = done_stamps(by_generator)
    run_pipeline(tiny_config(phantom_root, by_generator, *extra_sets,
                             "experiment.segmentation_by_generator={gmm: {synthetic_ratio: 0.5}}"), stages=STAGES)
    assert done_stamps(by_generator) == before  # the value the segmentation section has: nothing retrains
    run_pipeline(tiny_config(phantom_root, by_generator, *extra_sets,
                             "experiment.segmentation_by_generator={gmm: {synthetic_filter: 0.5}}"), stages=STAGES)
    run_pipeline(tiny_config(phantom_root, for_all, *extra_sets, "segmentation.synthetic_filter=0.5"), stages=STAGES)
    assert unit_keys(by_generator) == unit_keys(for_all)  # the same units as with the filter set for every arm
    after = done_stamps(by_generator)
    retrained = sorted(name for name in after if after[name] != before[name])
    assert retrained and all("/real_plus_synthetic-gmm/" in name for name in retrained)
    assert all((by_generator / name).parent.joinpath("synthetic_filter.csv").is_file() for name in retrained)


def test_conditions_pick_the_arms_that_run(phantom_root, tmp_path):
    sets = ["experiment.augmentations=[standard, strong]", "experiment.generators=[warp, gmm]"]
    cfg = tiny_config(phantom_root, tmp_path, *sets, 'experiment.conditions=["real", "real [strong]", '
                                                     '"real+synthetic (gmm) [strong]"]')
    assert conditions(cfg) == [("real", "", "standard"), ("real", "", "strong"), ("real+synthetic", "gmm", "strong")]
    assert len(conditions(tiny_config(phantom_root, tmp_path, *sets))) == 6  # empty: every condition
    with pytest.raises(ConfigError, match=r"experiment.conditions\[0\] = 'gmm' is not a condition"):
        tiny_config(phantom_root, tmp_path, *sets, 'experiment.conditions=["gmm"]')
    with pytest.raises(ConfigError, match=r"runs 'real\+synthetic \(gmm\) \[strong\]' without 'real \[strong\]'"):
        tiny_config(phantom_root, tmp_path, *sets, 'experiment.conditions=["real", "real+synthetic (gmm) [strong]"]')


@pytest.mark.parametrize("setting, match", [
    ("{spade: {synthetic_ratio: 0.2}}", r"segmentation_by_generator.spade: 'spade' is not in experiment.generators"),
    ("{gmm: {steps: 2}}", r"segmentation_by_generator.gmm.steps: only settings that the real arm never reads"),
    ("{gmm: {synthetic_ratio: 2}}", r"segmentation_by_generator.gmm.synthetic_ratio = 2.0 is too large"),
    ("{gmm: {synthetic_schedule: fast}}", r"segmentation_by_generator.gmm.synthetic_schedule = 'fast' is not allowed"),
])
def test_a_generators_own_settings_are_checked(phantom_root, tmp_path, setting, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(phantom_root, tmp_path, f"experiment.segmentation_by_generator={setting}")


def test_a_generators_own_filter_needs_the_real_arm(phantom_root, tmp_path):
    with pytest.raises(ConfigError, match=r"segmentation_by_generator.gmm.synthetic_filter = 0.2 drops .*experiment.arms"):
        tiny_config(phantom_root, tmp_path, "experiment.arms=[real+synthetic]",
                    "experiment.segmentation_by_generator={gmm: {synthetic_filter: 0.2}}")
