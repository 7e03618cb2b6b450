"""segmentation.synthetic_filter through the pipeline: the real arm judges, only the synthetic arms retrain."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from pipeline.config import ConfigError
from pipeline.run import run_pipeline
from tests.pipeline.test_run import done_stamps, tiny_config


def test_filtered_arms_retrain_on_the_slices_their_judge_keeps(phantom_root, extra_sets, finished, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = done_stamps(run_dir)
    run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets, "segmentation.synthetic_filter=0.5"),
                 stages=["prepare", "train_generator", "synthesize", "train_segmenters"])
    after = done_stamps(run_dir)
    segmenters = [name for name in after if name.startswith("train_segmenters/")]
    real = [name for name in segmenters if "/real/" in name]
    mixed = [name for name in segmenters if "/real_plus_synthetic-gmm/" in name]
    assert len(real) == len(mixed) == 2  # two fractions
    assert all(after[name] == before[name] for name in real)  # the judges are reused, not retrained
    for name in mixed:
        assert after[name] != before[name]
        unit = (run_dir / name).parent
        marked = pd.read_csv(unit / "synthetic_filter.csv")
        assert (~marked["kept"]).sum() == round(0.5 * len(marked))
        assert marked.loc[~marked["kept"], "dice"].max() <= marked.loc[marked["kept"], "dice"].min()
        key = json.loads((run_dir / name).read_text())["key"]
        assert key != json.loads((finished / name).read_text())["key"]
    from pipeline.report import synthetic_use  # the report and the printed table say that slices were dropped

    assert "the 50% of the synthetic slices that the real arm's segmenter agrees least with were dropped" in \
        synthetic_use(tiny_config(phantom_root, run_dir, "segmentation.synthetic_filter=0.5"))


def test_a_filter_without_the_real_arm_is_refused_by_name(phantom_root, tmp_path):
    with pytest.raises(ConfigError, match=r"segmentation\.synthetic_filter = 0\.2 .*experiment\.arms"):
        tiny_config(phantom_root, tmp_path, "segmentation.synthetic_filter=0.2", "experiment.arms=[real+synthetic]")
