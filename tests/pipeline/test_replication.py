"""Issue 14, a result that replicates: repeated draws of the training patients (each study repeated on its own
patients), statistics that know the design, a sealed test set."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
import pytest

from pipeline.run import run_pipeline
from tests.pipeline.test_run import done_stamps, tiny_config


@pytest.fixture(scope="module")
def two_draws(phantom_root, extra_sets, finished, tmp_path_factory):
    """The finished tiny run extended to 2 draws; records what the GMM of each newly trained draw was fitted on."""
    from synthesis.generators.gmm import GMMGenerator

    run_dir = tmp_path_factory.mktemp("draws") / "run"
    shutil.copytree(finished, run_dir)
    fitted, real_fit = [], GMMGenerator.fit

    def recording_fit(self, masks, images, *args, **kwargs):
        fitted.append(images.copy())
        return real_fit(self, masks, images, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(GMMGenerator, "fit", recording_fit)
    try:
        before = done_stamps(run_dir)
        run = run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets, "experiment.draws=2"))
    finally:
        mp.undo()
    return run_dir, run, before, fitted


def test_draw_zero_keeps_its_names_and_cache_and_later_draws_get_their_own_units(two_draws, finished):
    run_dir, run, before, _ = two_draws
    after = done_stamps(run_dir)
    assert {k: after[k] for k in before} == before  # every unit of the one-draw run is reused as it was
    new = sorted(set(after) - set(before))
    assert "train_segmenters/f0.5/d1/real/seed0/done.json" in new
    assert "train_generator/f0.5/d1/gmm/done.json" in new and "quality/f0.5/d1/generators/done.json" in new
    assert not any("/f1/d" in k for k in new)  # fraction 1.0 is every training patient: one draw
    one = json.loads((finished / "train_segmenters" / "manifest.json").read_text())["results"]
    two = json.loads((run_dir / "train_segmenters" / "manifest.json").read_text())["results"]
    assert {name: unit["key"] for name, unit in two.items() if name in one} == \
        {name: unit["key"] for name, unit in one.items()}


def test_draws_are_recorded_and_never_hold_a_validation_or_test_patient(two_draws):
    run_dir, run, _, _ = two_draws
    split = json.loads((run_dir / "prepare" / "splits.json").read_text())
    draws = split["draws"]["0.5"]
    assert draws["mode"] == "independent"  # 2 draws x 2 patients > 3 training patients
    assert draws["patients"][0] == split["fractions"]["0.5"] and draws["patients"][1] != draws["patients"][0]
    assert all(set(p) <= set(split["train"]) for p in draws["patients"])
    assert split["draws"]["1.0"]["mode"] == "all" and split["fractions"]["0.5"] == run.fraction_patients(0.5)
    assert "independent seeded draws" in (run_dir / "report" / "report.md").read_text()


def test_the_generator_of_a_draw_is_fitted_on_that_draws_patients_only(two_draws):
    run_dir, run, _, fitted = two_draws
    assert len(fitted) == 1  # draw 0 was cached; only draw 1's GMM was trained
    own = run.patient_cases(run.fraction_patients(0.5, 1))
    assert np.array_equal(fitted[0], np.concatenate([c.image for c in own]))


def test_every_table_carries_the_draw(two_draws):
    run_dir, _, _, _ = two_draws
    per_case = pd.read_csv(run_dir / "evaluate" / "per_case.csv")
    assert list(per_case.columns).index("draw") == list(per_case.columns).index("fraction") + 1
    assert per_case.groupby("fraction")["draw"].unique().map(sorted).to_dict() == {0.5: [0, 1], 1.0: [0]}
    for name in ("seeds.csv", "per_case_extra.csv"):
        assert set(pd.read_csv(run_dir / "evaluate" / name)["draw"]) == {0, 1}, name
    assert set(pd.read_csv(run_dir / "quality" / "quality.csv")["draw"]) == {0, 1}


def test_the_draws_table_and_the_forest_plot_show_each_draw_and_the_pooled_estimate(two_draws):
    run_dir, _, _, _ = two_draws
    draws = pd.read_csv(run_dir / "evaluate" / "draws.csv", keep_default_na=False)
    at_half = draws[draws["fraction"] == 0.5]
    assert list(at_half["draw"]) == [0, 1] and (at_half["reference"] == "real").all()
    stats = pd.read_csv(run_dir / "evaluate" / "statistics.csv", keep_default_na=False)
    pooled = stats[(stats["fraction"] == 0.5) & (stats["reference_kind"] == "real")].iloc[0]
    assert pooled["n_draws"] == 2 and pooled["ci_method"] == "draw -> patient bootstrap"
    assert pooled["draws_positive"] == int((at_half["diff_mean"] > 0).sum())
    assert pooled["diff_mean"] == pytest.approx(at_half["diff_mean"].mean(), abs=1e-12)  # same test patients
    md = (run_dir / "report" / "report.md").read_text()
    quality = md[md.index("## Synthetic data quality"):]
    assert quality[quality.index("| draw |"):].count("\n| 1 |") >= 2  # which draw each quality row is from
    assert "figures/forest.png" in md and (run_dir / "report" / "figures" / "forest.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------ a sealed test set
SEALED = ("evaluate.sealed=true", "experiment.fractions=[1.0]",
          "data.extra_test_sets=[{name: lowfield, phantom_style: lowfield_noisy, phantom_patients: 1}]")


def test_a_sealed_run_never_opens_a_test_mask_and_each_unsealing_is_recorded(phantom_root, tmp_path, monkeypatch):
    import nibabel

    import data.cache
    from pipeline.cli import main
    from pipeline.config import deep_merge, parse_override
    from tests.pipeline.test_run import TINY

    loaded, hashed = [], []
    real_load, real_sha1 = nibabel.load, data.cache.file_sha1
    monkeypatch.setattr(nibabel, "load", lambda path, *a, **k: loaded.append(Path(path)) or real_load(path, *a, **k))
    monkeypatch.setattr(data.cache, "file_sha1", lambda path: hashed.append(Path(path)) or real_sha1(path))
    run_dir = tmp_path / "sealed"
    run = run_pipeline(tiny_config(phantom_root, run_dir, *SEALED))
    test = set(run.split["test"])
    assert test and not [p for p in loaded + hashed if p.parent.name in test and "_gt" in p.name]  # no test mask
    assert not [p for p in hashed if p.parent.name in test]  # no test case preprocessed
    test_images = [p for p in loaded if p.parent.name in test]
    assert len(test_images) == len(set(test_images))  # read once each, by the duplicate-image hash only
    assert not [p for p in loaded + hashed if "extra" in p.parts]  # nor an extra test set
    per_case = pd.read_csv(run_dir / "evaluate" / "per_case.csv")
    assert set(per_case["patient"]) == set(run.split["val"])  # validation results only
    assert not (run_dir / "evaluate" / "f1").exists() and not (run_dir / "unsealed.json").exists()
    md = (run_dir / "report" / "report.md").read_text()
    assert "TEST SET SEALED" in md and "Never unsealed" in md

    monkeypatch.undo()
    before = done_stamps(run_dir)
    raw = {}
    for item in [f"data.root={phantom_root}", *TINY, *SEALED]:
        raw = deep_merge(raw, parse_override(item))
    config = tmp_path / "sealed.yaml"
    config.write_text(yaml.safe_dump(raw))
    for time in (1, 2):
        assert main(["run", str(config), "--run-dir", str(run_dir), "--unseal"]) == 0
        records = json.loads((run_dir / "unsealed.json").read_text())
        assert len(records) == time and [r["scored_now"] for r in records] == [True, False][:time]
        assert records[-1]["config_hash"] == records[0]["config_hash"] and records[-1]["time_utc"].endswith("+00:00")
    after = done_stamps(run_dir)
    assert {k: v for k, v in after.items() if not k.startswith("evaluate/")} == \
        {k: v for k, v in before.items() if not k.startswith("evaluate/")}  # scoring retrains nothing
    assert set(pd.read_csv(run_dir / "evaluate" / "per_case.csv")["patient"]) == test
    assert set(pd.read_csv(run_dir / "evaluate" / "per_case_extra.csv")["test_set"]) == {"lowfield"}
    md = (run_dir / "report" / "report.md").read_text()
    assert "unsealed 2 time(s)" in md and "TEST SET SEALED" not in md and records[0]["config_hash"] in md


def test_unseal_needs_a_sealed_test_set(phantom_root, tmp_path):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="evaluate.sealed is false"):
        run_pipeline(tiny_config(phantom_root, tmp_path / "run"), unseal=True)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def two_shares(phantom_root, extra_sets, finished, tmp_path_factory):
    """The finished tiny run (synthetic share 0.5) with the share swept over [0.25, 0.5]."""
    run_dir = tmp_path_factory.mktemp("shares") / "run"
    shutil.copytree(finished, run_dir)
    before = done_stamps(run_dir)
    run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets, "experiment.synthetic_ratios=[0.25, 0.5]"))
    return run_dir, before


def test_a_swept_share_trains_only_the_new_values_and_keeps_every_unit_it_had(two_shares):
    run_dir, before = two_shares
    after = done_stamps(run_dir)
    assert {k: after[k] for k in before if k.startswith("train_")} == \
        {k: v for k, v in before.items() if k.startswith("train_")}
    trained = sorted(k for k in set(after) - set(before) if k.startswith("train_segmenters/"))
    assert trained == ["train_segmenters/f0.5/real_plus_synthetic-gmm_share0.25/seed0/done.json",
                       "train_segmenters/f1/real_plus_synthetic-gmm_share0.25/seed0/done.json"]


def test_the_share_is_chosen_on_validation_and_every_result_uses_the_chosen_one(two_shares):
    from segmentation.train import read_convergence

    run_dir, _ = two_shares
    selection = pd.read_csv(run_dir / "evaluate" / "selection.csv")
    assert len(selection) == 2 and set(selection["knob"]) == {"synthetic_ratio"}
    for row in selection.itertuples():
        folder = run_dir / "train_segmenters" / f"f{row.fraction:g}"
        best = {share: read_convergence(folder / name / "seed0" / "metrics.csv", 3, 0.01).best_val_dice
                for share, name in ((0.25, "real_plus_synthetic-gmm_share0.25"), (0.5, "real_plus_synthetic-gmm"))}
        assert row.chosen == max(best, key=lambda s: (best[s], -s))  # by hand: the best validation Dice
    variants = pd.read_csv(run_dir / "evaluate" / "variants.csv")
    assert set(variants.loc[variants["arm"] == "real+synthetic", "synthetic_ratio"]) == {0.25, 0.5}
    chosen = dict(zip(selection["fraction"], selection["chosen"]))
    for name in ("per_case.csv", "per_case_extra.csv"):
        table = pd.read_csv(run_dir / "evaluate" / name)
        mixed = table[table["arm"] == "real+synthetic"]
        assert (mixed["synthetic_ratio"] == mixed["fraction"].map(chosen)).all(), name
        assert set(table.loc[table["arm"] == "real", "synthetic_ratio"]) == {0.0}
    md = (run_dir / "report" / "report.md").read_text()
    assert "Choices made on validation" in md and "never on the test patients" in md


def test_a_swept_share_needs_the_arm_it_belongs_to(phantom_root, tmp_path):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="experiment.synthetic_ratios"):
        tiny_config(phantom_root, tmp_path, "experiment.arms=[real]", "experiment.synthetic_ratios=[0.2, 0.5]")
    with pytest.raises(ConfigError, match="does not try"):
        tiny_config(phantom_root, tmp_path, "experiment.select_on=none", "experiment.synthetic_ratios=[0.2, 0.3]")


def test_outer_cross_validation_tests_each_draw_on_its_own_fold(phantom_root, tmp_path):
    run_dir = tmp_path / "cv"
    run_pipeline(tiny_config(phantom_root, run_dir, "experiment.fractions=[1.0]", "experiment.outer_folds=2",
                             "data.extra_test_sets=[]", "quality.enabled=false"))
    split = json.loads((run_dir / "prepare" / "splits.json").read_text())
    folds = split["test_folds"]
    assert len(folds) == 2 and set(folds[0]) | set(folds[1]) == set(split["train"]) | set(split["test"])
    per_case = pd.read_csv(run_dir / "evaluate" / "per_case.csv")
    for draw, fold in enumerate(split["draws"]["1.0"]["folds"]):
        assert set(per_case.loc[per_case["draw"] == draw, "patient"]) == set(folds[fold])
        trained_on = split["draws"]["1.0"]["patients"][draw]
        assert not set(trained_on) & set(folds[fold]) and not set(trained_on) & set(split["val"])
    assert set(per_case["patient"]) == set(folds[0]) | set(folds[1])  # every patient outside validation, once
    stats = pd.read_csv(run_dir / "evaluate" / "statistics.csv")
    row = stats[(stats["reference_kind"] == "real")].iloc[0]
    assert row["n_draws"] == 2 and row["n_patients"] == len(set(per_case["patient"]))
    md = (run_dir / "report" / "report.md").read_text()
    assert "outer cross-validation" in md and "Outer fold 1" in md


def test_outer_cross_validation_refuses_a_sealed_or_separate_test_set(phantom_root, tmp_path):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="no test set to seal"):
        tiny_config(phantom_root, tmp_path, "experiment.outer_folds=2", "evaluate.sealed=true")
    with pytest.raises(ConfigError, match="data.test_root"):
        tiny_config(phantom_root, tmp_path, "experiment.outer_folds=2", f"data.test_root={phantom_root}")
