"""The pipeline end to end on a tiny phantom: caching, invalidation, kill-and-resume, the report."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.run import STAGES, run_pipeline

TINY = [
    "data.preprocess.target_spacing=3.0", "data.preprocess.crop_size=64",
    "data.split.n_test=2", "data.split.n_val=1", "data.split.stratify_by=null",
    "synthesis.n_volumes=2",
    "segmentation.channels=[4, 8, 16]", "segmentation.strides=[2, 2]", "segmentation.num_res_units=0",
    "segmentation.steps=6", "segmentation.val_every=3", "segmentation.batch_size=4",
    "experiment.fractions=[0.5, 1.0]", "experiment.seeds=[0]", "experiment.generators=[gmm]",
    "experiment.arms=[real, real+synthetic]", "experiment.bootstrap_samples=100",
]


def tiny_config(root: Path, run_dir: Path, *extra: str):
    return load_config(None, overrides=[f"data.root={root}", f"run_dir={run_dir}", *TINY, *extra])


def swap_rv_lv(path: Path) -> None:
    """Rewrite a mask file with RV and LV exchanged (a dataset with another label order)."""
    import nibabel as nib
    import numpy as np

    img = nib.load(path)
    labels = np.asarray(img.dataobj)
    swapped = labels.copy()
    swapped[labels == 1], swapped[labels == 3] = 3, 1
    nib.save(nib.Nifti1Image(swapped, img.affine, img.header), path)


def done_stamps(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("done.json")}


def test_every_stage_writes_its_manifest(finished):
    for stage in STAGES:
        manifest = json.loads((finished / stage / "manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["key"] and "torch" in manifest["versions"]
    split = json.loads((finished / "prepare" / "splits.json").read_text())
    assert set(split["fractions"]["0.5"]) <= set(split["fractions"]["1.0"]) == set(split["train"])
    per_case = pd.read_csv(finished / "evaluate" / "per_case.csv")
    assert set(per_case["patient"]) == set(split["test"])
    assert len(per_case) == 2 * 2 * 2 * 1 * 2  # fractions x conditions x test patients x seeds x phases


def test_extra_test_sets_are_scored_separately_with_their_own_label_order(finished):
    extra = pd.read_csv(finished / "evaluate" / "per_case_extra.csv")
    assert set(extra["test_set"]) == {"same", "swapped", "lowfield"}
    assert set(extra.loc[extra.test_set == "lowfield", "patient"]) == {"patient001"}
    same = extra[extra.test_set == "same"].drop(columns="test_set").reset_index(drop=True)
    swapped = extra[extra.test_set == "swapped"].drop(columns="test_set").reset_index(drop=True)
    assert same["dice_RV"].notna().all() and len(same) == 2 * 2 * 2 * 2  # fractions x conditions x patients x phases
    pd.testing.assert_frame_equal(same, swapped)  # remapped labels score exactly like the original order
    robustness = pd.read_csv(finished / "evaluate" / "robustness.csv", keep_default_na=False, na_values=[""])
    assert list(robustness["test_set"].unique()) == ["test (in-domain)", "same", "swapped", "lowfield"]
    assert robustness.loc[robustness.arm != "real", "diff_mean"].notna().all()
    assert "Robustness: shifted-domain test sets" in (finished / "report" / "report.md").read_text()
    assert (finished / "evaluate" / "f1" / "real" / "seed0" / "predictions" / "swapped").is_dir()


def test_quality_stage_scores_each_generator_next_to_the_real_reference(finished):
    quality = pd.read_csv(finished / "quality" / "quality.csv")
    assert list(quality["generator"]) == ["real", "gmm", "real", "gmm"]  # per fraction: reference row first
    real = quality[quality.generator == "real"]
    assert (real["consistency_gap"] == 0).all() and not real["memorisation_flagged"].any()
    assert (quality["fd"] >= 0).all() and quality["judge"].str.contains("/real/seed0").all()
    assert (finished / "quality" / "f0.5" / "generators" / "pairs_gmm.png").stat().st_size > 1000


def test_rerun_skips_everything(phantom_root, extra_sets, finished):
    before = done_stamps(finished)
    run = run_pipeline(tiny_config(phantom_root, finished, *extra_sets))
    assert run.timings == {} and done_stamps(finished) == before


def test_changing_a_generator_setting_reruns_only_what_depends_on_it(phantom_root, extra_sets, finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = done_stamps(run_dir)
    run = run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets, "synthesis.gmm.noise_std=0.05"))
    after = done_stamps(run_dir)
    changed = {k for k in after if after[k] != before.get(k)}
    assert "prepare" not in run.timings
    assert {"train_generator", "synthesize", "train_segmenters", "evaluate", "report"} <= set(run.timings)
    assert any(k.startswith("train_generator/") for k in changed)
    assert any(k.startswith("train_segmenters/") and "synthetic" in k for k in changed)
    assert not any(k.startswith("train_segmenters/") and "/real/" in k for k in changed)  # real arm untouched


def test_the_synthetic_share_keeps_the_real_arm_cached(phantom_root, extra_sets, finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = done_stamps(run_dir)
    run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets, "segmentation.synthetic_ratio=0.25"))
    after = done_stamps(run_dir)
    changed = {k for k in after if after[k] != before.get(k)}
    assert any(k.startswith("train_segmenters/") and "synthetic" in k for k in changed)
    assert not any(k.startswith("train_segmenters/") and "/real/" in k for k in changed)


def test_runtime_settings_keep_the_cached_units(phantom_root, extra_sets, finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = done_stamps(run_dir)
    run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets, "segmentation.channels_last=true",
                             "segmentation.num_workers=1", "synthesis.spade.device=cpu", "data.preprocess_workers=2"))
    assert done_stamps(run_dir) == before  # stages re-checked, but no unit trained or evaluated again


def test_a_dataset_provisioned_again_reruns_prepare_and_no_unit(phantom_root, tmp_path):
    """New mtimes on the same bytes (a dataset copied or provisioned again) re-run prepare, seconds, and no unit:
    the units are keyed on the files' content. A changed training image retrains what trained on it."""
    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    run_dir = tmp_path / "run"
    cfg = tiny_config(root, run_dir, "experiment.fractions=[1.0]", "experiment.arms=[real]", "quality.enabled=false")
    stages = ["prepare", "train_segmenters"]
    run_pipeline(cfg, stages=stages)
    units, prepared = done_stamps(run_dir), (run_dir / "prepare" / "manifest.json").stat().st_mtime_ns
    files = [p for p in root.rglob("*") if p.is_file()]
    later = max(p.stat().st_mtime_ns for p in files) + 10**9
    for path in files:
        os.utime(path, ns=(later, later))
    run_pipeline(cfg, stages=stages)
    assert (run_dir / "prepare" / "manifest.json").stat().st_mtime_ns != prepared  # prepare ran again ...
    assert done_stamps(run_dir) == units  # ... and nothing else did
    patient = json.loads((run_dir / "prepare" / "splits.json").read_text())["train"][0]
    image_path = sorted((root / patient).glob(f"{patient}_frame[0-9][0-9].nii.gz"))[0]
    image = nib.load(image_path)
    voxels = np.asarray(image.dataobj).copy()
    voxels.flat[voxels.size // 2] += 1
    nib.save(nib.Nifti1Image(voxels, image.affine, image.header), image_path)
    run_pipeline(cfg, stages=stages)
    changed = [name for name, stamp in done_stamps(run_dir).items() if units.get(name) != stamp]
    assert any(name.startswith("train_segmenters/") for name in changed)


def test_a_unit_reset_after_its_stage_finished_is_redone_not_read(phantom_root, extra_sets, finished, tmp_path):
    """A killed run of other settings may reset a unit folder (its key changed) after the stage's manifest was
    written; the next run of the first settings redoes that unit alone instead of failing to read it."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    unit = run_dir / "train_segmenters" / "f0.5" / "real_plus_synthetic-gmm" / "seed0"
    shutil.rmtree(unit)
    unit.mkdir()
    (unit / ".started").write_text("another key")
    before = done_stamps(run_dir)
    run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets))
    after = done_stamps(run_dir)
    assert {k for k in after if k.startswith("train_segmenters/") and after[k] != before.get(k)} == {
        str(unit.relative_to(run_dir) / "done.json")}
    assert (run_dir / "evaluate" / "per_case.csv").is_file()


def test_force_reruns_one_stage(phantom_root, extra_sets, finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    run = run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets), force=("report",))
    assert set(run.timings) == {"report"}


def test_killed_run_resumes_to_the_same_results(phantom_root, extra_sets, finished, tmp_path, monkeypatch):
    import segmentation.train as seg_train

    run_dir = tmp_path / "killed"
    real_train = seg_train.train_segmenter
    calls = {"n": 0}

    def dies_mid_training(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # third segmenter: train half-way, then the process "dies"
            real_train(*args, **kwargs, max_steps=3)
            raise KeyboardInterrupt("killed")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(seg_train, "train_segmenter", dies_mid_training)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets))
    assert not (run_dir / "train_segmenters" / "manifest.json").exists()
    monkeypatch.setattr(seg_train, "train_segmenter", real_train)
    run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets))
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "evaluate" / "per_case.csv"),
                                  pd.read_csv(finished / "evaluate" / "per_case.csv"))


def test_report_has_every_section_and_the_summary_numbers(finished):
    md = (finished / "report" / "report.md").read_text()
    html = (finished / "report" / "report.html").read_text()
    for section in ("## Data", "## Generator: gmm", "## Results", "## Synthetic data quality", "## How it was run"):
        assert section in md
        assert section[3:] in html
    assert "data:image/png;base64," in html and "<img src=\"figures" not in html  # self-contained
    summary = pd.read_csv(finished / "evaluate" / "summary.csv")
    for value in summary.select_dtypes("float").to_numpy().ravel():
        if pd.notna(value):
            assert f"{value:.3f}" in md


def test_a_report_rebuilt_in_an_older_run_directory_finds_its_quality_figures(phantom_root, extra_sets, finished,
                                                                            tmp_path):
    """Quality units once lived in the subset folder itself (quality/f0.5/): such a run directory's quality
    stage stays current, and its report, rebuilt, still shows the figures."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    unit = run_dir / "quality" / "f0.5"
    for path in (unit / "generators").iterdir():
        path.rename(unit / path.name)
    (unit / "generators").rmdir()
    run = run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets), force=("report",))
    assert set(run.timings) == {"report"}  # nothing else ran again
    assert "gmm (fraction 0.5): one held-out mask per column" in (run_dir / "report" / "report.md").read_text()


def test_real_only_sweep_skips_the_synthesis_stages(phantom_root, tmp_path):
    from pipeline.run import needed_stages

    real_only = tiny_config(phantom_root, tmp_path, "experiment.arms=[real]", "quality.enabled=false")
    assert needed_stages(real_only) == ["prepare", "train_segmenters", "evaluate", "report"]
    no_judge = tiny_config(phantom_root, tmp_path, "experiment.arms=[real+synthetic]")
    assert "quality" not in needed_stages(no_judge) and "synthesize" in needed_stages(no_judge)


def test_quality_only_study_trains_and_judges_generators_without_synthetic_training(phantom_root, tmp_path):
    run_dir = tmp_path / "real_only"
    run = run_pipeline(tiny_config(phantom_root, run_dir, "experiment.arms=[real]", "experiment.fractions=[1.0]"))
    assert set(run.timings) == {"prepare", "train_generator", "train_segmenters", "evaluate", "quality", "report"}
    assert not (run_dir / "synthesize").exists()
    assert list(pd.read_csv(run_dir / "quality" / "quality.csv")["generator"]) == ["real", "gmm"]
    md = (run_dir / "report" / "report.md").read_text()
    assert "changes mean Dice" not in md and "## Synthetic data quality" in md


def test_tissue_classes_are_fitted_on_the_fraction_training_patients_only(phantom_root, tmp_path):
    """Torso conditioning: the cut points a generator stores come from its fraction's training slices, never from
    validation or test patients, and the synthetic volumes are written with heart labels only."""
    from synthesis.base import load_generator
    from synthesis.tissue import TissueClasses

    cfg = tiny_config(phantom_root, tmp_path / "run", "experiment.fractions=[0.5]", "synthesis.gmm.tissue_classes=3",
                      "experiment.arms=[real+synthetic]")
    run = run_pipeline(cfg, stages=("prepare", "train_generator", "synthesize"))
    generator = load_generator(tmp_path / "run" / "train_generator" / "f0.5" / "gmm" / "generator.pt")
    train = run.patient_cases(run.fraction_patients(0.5))
    seen = TissueClasses.fit(np.concatenate([c.mask for c in train]), np.concatenate([c.image for c in train]), 3,
                             seed=cfg.synthesis.seed)
    assert generator.tissue == seen
    everything = train + run.patient_cases(run.split["val"]) + run.patient_cases(run.split["test"])
    assert TissueClasses.fit(np.concatenate([c.mask for c in everything]),
                             np.concatenate([c.image for c in everything]), 3, seed=cfg.synthesis.seed) != seen
    masks = [nib.load(p).get_fdata() for p in (tmp_path / "run" / "synthesize").rglob("*_gt.nii.gz")]
    assert masks and all(set(np.unique(m)) <= {0, 1, 2, 3} for m in masks)


def test_a_mixture_trains_on_the_union_of_its_generators_volumes(phantom_root, tmp_path):
    from pipeline.run import synthetic_cases

    cvae = ["synthesis.cvae.steps=2", "synthesis.cvae.batch_size=2", "synthesis.cvae.channels=[4, 8]",
            "synthesis.cvae.spade_hidden=4", "synthesis.cvae.head_channels=4", "synthesis.cvae.z_dim=2",
            "synthesis.cvae.progress=false"]
    cfg = tiny_config(phantom_root, tmp_path / "run", "experiment.fractions=[1.0]", "experiment.generators=[gmm, cvae]",
                      "experiment.mixtures=[gmm+cvae]", "quality.enabled=false", *cvae)
    run = run_pipeline(cfg)
    pooled = {c.case_id for c in synthetic_cases(run, 1.0, "gmm+cvae")}
    parts = [{c.case_id for c in synthetic_cases(run, 1.0, g)} for g in ("gmm", "cvae")]
    assert pooled == parts[0] | parts[1] and not parts[0] & parts[1]
    per_case = pd.read_csv(tmp_path / "run" / "evaluate" / "per_case.csv", keep_default_na=False)
    assert set(per_case["generator"]) == {"", "gmm", "cvae", "gmm+cvae"}
    assert "real+synthetic (gmm+cvae)" in (tmp_path / "run" / "report" / "report.md").read_text()


@pytest.mark.parametrize("mixture", ["gmm", "gmm+gmm", "gmm+spade"])
def test_a_mixture_must_pool_listed_generators(phantom_root, tmp_path, mixture):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"experiment.mixtures\[0\]"):
        tiny_config(phantom_root, tmp_path, f"experiment.mixtures=[{mixture}]")


def test_undertrained_segmenters_are_flagged_and_no_gain_is_claimed(finished):
    """The tiny run trains 6 steps with 2 validations: too few to show a plateau, so nothing may read as a result."""
    per_case = pd.read_csv(finished / "evaluate" / "per_case.csv")
    assert not per_case["converged"].any() and per_case["final_val_dice"].between(0, 1).all()
    stats = pd.read_csv(finished / "evaluate" / "statistics.csv", keep_default_na=False)
    assert (stats["converged"].astype(str) == "False").all()
    assert stats["caveat"].str.contains("not converged").all()
    seeds = pd.read_csv(finished / "evaluate" / "seeds.csv")
    assert (seeds["n_converged"] == 0).all()
    md = (finished / "report" / "report.md").read_text()
    html = (finished / "report" / "report.html").read_text()
    assert "changes mean Dice by" not in md  # no gain or loss stated ...
    conditions = len(stats[stats["reference_kind"] == "real"])  # one sentence per condition ...
    sentences = [line for line in md.splitlines() if line.startswith("> With ")]
    assert len(sentences) == conditions and all("NO CONCLUSION" in s for s in sentences)  # ... each says why
    assert "NO CONCLUSION" in html
    assert "NOT CONVERGED" in md and "NOT CONVERGED" in html  # next to the results' numbers
    from pipeline.report import headline_table
    from pipeline.run import Run

    printed = headline_table(Run(cfg=tiny_config(Path("unused"), finished), run_dir=finished))
    assert "NOT CONVERGED" in printed and "NO CONCLUSION" in printed
    use = "Real+synthetic arms: synthetic share of each batch 0.5 (segmentation.synthetic_ratio)"
    assert use in md and use in printed and "every synthetic slice kept" in md  # how the synthetic rows were made


def test_converged_runs_state_their_effect_and_plateau_settings_retrain_nothing(finished, extra_sets, phantom_root,
                                                                                 tmp_path):
    """Judged with a plateau rule every curve passes (and no floor), the same segmenters give a plain headline;
    changing the judgement re-runs evaluation and the report only."""
    run_dir = tmp_path / "copy"
    shutil.copytree(finished, run_dir)
    before = done_stamps(run_dir)
    run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets, "experiment.plateau_window=1",
                             "experiment.plateau_min_delta=1.0", "experiment.real_dice_floor=0.0"))
    after = done_stamps(run_dir)
    assert {k: v for k, v in after.items() if k.startswith(("train_", "synthesize", "prepare"))} == \
        {k: v for k, v in before.items() if k.startswith(("train_", "synthesize", "prepare"))}
    stats = pd.read_csv(run_dir / "evaluate" / "statistics.csv", keep_default_na=False)
    assert (stats["caveat"] == "").all()
    md = (run_dir / "report" / "report.md").read_text()
    assert re.search(r"changes mean Dice by [+-]\d+\.\d points", md) and "NO CONCLUSION" not in md


def test_a_real_arm_below_the_floor_flags_every_comparison(finished, extra_sets, phantom_root, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished, run_dir)
    run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets, "experiment.plateau_window=1",
                             "experiment.plateau_min_delta=1.0", "experiment.real_dice_floor=1.0"))
    stats = pd.read_csv(run_dir / "evaluate" / "statistics.csv", keep_default_na=False)
    assert stats["caveat"].str.contains("below the floor 1").all() and stats["real_below_floor"].all()
    assert "NO CONCLUSION" in (run_dir / "report" / "report.md").read_text()


def test_stages_up_to_one_already_current_stop_there(phantom_root, extra_sets, finished, tmp_path):
    """`--stages prepare,...,synthesize` on a run whose stages are all current: nothing runs, and the later stages
    (current or not) are neither run nor asked for."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    shutil.rmtree(run_dir / "evaluate")  # a later stage that is not current must not matter
    before = done_stamps(run_dir)
    run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets), stages=["prepare", "train_generator", "synthesize"])
    assert done_stamps(run_dir) == before and not (run_dir / "evaluate").exists()


def test_the_headline_of_a_run_without_comparisons_says_why():
    from pipeline.report import nothing_to_compare

    assert nothing_to_compare(pd.DataFrame({"arm": ["real", "real"]})).startswith("Only the real arm was run")
    no_reference = nothing_to_compare(pd.DataFrame({"arm": ["real+synthetic"]}))
    assert no_reference.startswith("No real arm was run") and "experiment.arms" in no_reference
