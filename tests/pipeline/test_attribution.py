"""Attribution arms (issue 15): augmentation settings side by side, the deformation-only `warp` arm, and the
"beyond augmentation" difference a synthetic arm must show."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.run import Run, run_pipeline
from tests.pipeline.test_run import done_stamps, tiny_config

ATTRIBUTION = ("experiment.fractions=[1.0]", "experiment.generators=[gmm, warp]",
               "experiment.augmentations=[standard, strong]", "synthesis.gmm.background=real",
               "data.extra_test_sets=[]", "experiment.plateau_window=1", "experiment.plateau_min_delta=1.0",
               "experiment.real_dice_floor=0.0")


@pytest.fixture(scope="module")
def attribution(phantom_root, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("attribution")
    run_pipeline(tiny_config(phantom_root, run_dir, *ATTRIBUTION))
    return run_dir


def read(run_dir: Path, name: str) -> pd.DataFrame:
    from data.io import read_table

    return read_table(run_dir / "evaluate" / name)


def test_the_augmentation_column_reaches_every_table_and_the_report(attribution):
    for name in ("per_case.csv", "summary.csv", "statistics.csv", "seeds.csv"):
        assert set(read(attribution, name)["augmentation"]) == {"standard", "strong"}, name
    per_case = read(attribution, "per_case.csv")
    conditions = per_case.groupby(["arm", "generator", "augmentation"]).size()
    assert len(conditions) == 2 * 3  # (real, gmm, warp) x (standard, strong)
    md = (attribution / "report" / "report.md").read_text()
    for label in ("real [strong]", "real+synthetic (warp) [strong]", "real+synthetic (gmm) [strong]"):
        assert label in md


def test_beyond_augmentation_equals_a_hand_computation_from_per_case(attribution):
    per_case = read(attribution, "per_case.csv")
    only = per_case[(per_case["arm"] == "real") | (per_case["generator"] == "warp")]
    # the best augmentation-only arm by the VALIDATION patients' Dice (mean over seeds), never the test patients'
    by_validation = only.groupby(["arm", "generator", "augmentation", "seed"])["best_val_dice"].first() \
        .groupby(["arm", "generator", "augmentation"]).mean()
    best = by_validation.idxmax()
    reference = only.set_index(["arm", "generator", "augmentation"]).loc[best]
    gmm = per_case[(per_case["generator"] == "gmm") & (per_case["augmentation"] == "standard")]
    expected = (gmm.groupby("patient")["dice_mean"].mean() - reference.groupby("patient")["dice_mean"].mean()).mean()
    stats = read(attribution, "statistics.csv")
    row = stats[(stats["generator"] == "gmm") & (stats["augmentation"] == "standard")
                & (stats["reference_kind"] == "best augmentation-only")].iloc[0]
    assert row["diff_mean"] == pytest.approx(expected, abs=1e-9)
    from segmentation.statistics import condition_label

    assert row["reference"] == condition_label(*best)
    md = (attribution / "report" / "report.md").read_text()
    sentence = next(s for s in md.splitlines() if s.startswith("> ") and "gmm real+synthetic data changes" in s)
    if row["reference"] == "real":  # the best augmentation-only arm is this arm's own real reference: named once
        assert "beyond augmentation: the same comparison (real is the best augmentation-only arm" in sentence
    else:
        assert f"beyond augmentation: {100 * row['diff_mean']:+.1f} points" in sentence
    # augmentation-only arms are compared with real, not with themselves
    assert not ((stats["generator"] == "warp") & (stats["reference_kind"] == "best augmentation-only")).any()
    strong_real = stats[(stats["arm"] == "real") & (stats["augmentation"] == "strong")]
    assert list(strong_real["reference"]) == ["real"]  # strong vs standard augmentation of the real arm


def test_real_arms_are_cached_per_augmentation_and_never_keyed_by_the_synthetic_share(attribution, phantom_root,
                                                                                      tmp_path):
    import shutil

    manifest = json.loads((attribution / "train_segmenters" / "manifest.json").read_text())["results"]
    real = {name: unit["key"] for name, unit in manifest.items() if "/real/" in name or "/real_aug-" in name}
    assert set(real) == {"f1/real/seed0", "f1/real_aug-strong/seed0"} and len(set(real.values())) == 2
    run_dir = tmp_path / "copy"
    shutil.copytree(attribution, run_dir)
    before = done_stamps(run_dir)
    run = run_pipeline(tiny_config(phantom_root, run_dir, *ATTRIBUTION, "segmentation.synthetic_ratio=0.25"),
                       stages=["prepare", "train_generator", "synthesize", "train_segmenters"])
    after = done_stamps(run_dir)
    for name in real:
        assert after[f"train_segmenters/{name}/done.json"] == before[f"train_segmenters/{name}/done.json"]
    assert after["train_segmenters/f1/real_plus_synthetic-gmm/seed0/done.json"] != \
        before["train_segmenters/f1/real_plus_synthetic-gmm/seed0/done.json"]
    assert isinstance(run, Run)


def test_the_warp_arm_is_an_augmentation_only_baseline(attribution):
    run = Run(cfg=tiny_config(Path("unused"), attribution, *ATTRIBUTION), run_dir=attribution)
    assert run.augmentation_only() == {"warp"}
