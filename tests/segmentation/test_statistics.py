import numpy as np
import pandas as pd
import pytest

from segmentation.statistics import bootstrap_ci, compare_to_real, headline, seed_table


def _per_case(effect: float, noise: float = 0.01, n_patients: int = 12, seeds=(0, 1, 2)) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.6, 0.8, n_patients)
    rows = []
    for seed in seeds:
        for arm, gen, shift in (("real", "", 0.0), ("real+synthetic", "spade", effect)):
            for p, b in enumerate(base):
                for phase in ("ED", "ES"):
                    rows.append({"fraction": 0.1, "arm": arm, "generator": gen, "seed": seed,
                                 "patient": f"p{p:02d}", "phase": phase,
                                 "dice_mean": b + shift + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_clear_gain_is_detected_over_patients_and_seeds():
    cmp = compare_to_real(_per_case(0.05))
    row = cmp.iloc[0]
    assert row["diff_mean"] == pytest.approx(0.05, abs=0.01)
    assert row["ci_low"] > 0.03 and row["ci_high"] < 0.07
    assert row["p_wilcoxon_patients"] < 0.01
    assert row["seeds_positive"] == 3 and row["n_seeds"] == 3 and row["n_patients"] == 12
    assert row["p_ttest_seeds"] < 0.05
    assert "+5.0 points" in headline(cmp)[0]


def test_no_effect_gives_ci_around_zero():
    row = compare_to_real(_per_case(0.0, noise=0.02)).iloc[0]
    assert row["ci_low"] < 0 < row["ci_high"]
    assert row["p_wilcoxon_patients"] > 0.05


def test_bootstrap_ci_brackets_the_mean_and_needs_two_values():
    diff = np.array([0.1, 0.2, 0.3, 0.4])
    low, high = bootstrap_ci(diff)
    assert low <= diff.mean() <= high
    assert all(np.isnan(bootstrap_ci(np.array([0.1]))))


def test_seed_table_mean_and_sd_over_seeds():
    table = seed_table(_per_case(0.05))
    assert set(table["arm"]) == {"real", "real+synthetic"}
    assert (table["n_seeds"] == 3).all()


def test_comparisons_of_unconverged_segmenters_state_no_effect():
    frame = _per_case(0.05)
    frame["converged"] = ~((frame["arm"] == "real+synthetic") & (frame["seed"] == 2))
    row = compare_to_real(frame).iloc[0]
    assert not row["converged"] and "not converged" in row["caveat"]
    sentence = headline(compare_to_real(frame))[0]
    assert "NO CONCLUSION" in sentence and "changes mean Dice" not in sentence
    frame["converged"] = True
    assert compare_to_real(frame).iloc[0]["caveat"] == ""
    low = compare_to_real(frame, real_dice_floor=0.9).iloc[0]
    assert low["real_below_floor"] and "below the floor 0.9" in low["caveat"]
    assert "NO CONCLUSION" in headline(compare_to_real(frame, real_dice_floor=0.9))[0]
