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


def test_each_comparison_of_a_sentence_is_judged_on_its_own_segmenters():
    """vs real: readable; vs the best augmentation-only arm (real [strong], not converged): no conclusion."""
    frame = _per_case(0.05).assign(augmentation="standard", converged=True, best_val_dice=0.7)
    strong = frame[frame["arm"] == "real"].assign(augmentation="strong", converged=False, best_val_dice=0.9)
    sentence = [s for s in headline(compare_to_real(pd.concat([frame, strong], ignore_index=True)))
                if "spade" in s][0]
    assert "changes mean Dice by +5.0 points" in sentence
    assert "beyond augmentation: NO CONCLUSION, segmenters had not converged" in sentence


def test_an_unreadable_comparison_with_real_still_states_the_one_beyond_augmentation():
    """The synthetic arm has not converged: both clauses say NO CONCLUSION, each with its own measured figure."""
    frame = _per_case(0.05).assign(augmentation="standard", converged=True, best_val_dice=0.7)
    strong = frame[frame["arm"] == "real"].assign(augmentation="strong", best_val_dice=0.9)
    strong["dice_mean"] += 0.02  # the best augmentation-only arm: the synthetic arm is +3 points beyond it
    frame.loc[frame["arm"] != "real", "converged"] = False
    comparison = compare_to_real(pd.concat([frame, strong], ignore_index=True))
    sentence = [s for s in headline(comparison) if "spade" in s][0]
    beyond = comparison[comparison["reference_kind"] == "best augmentation-only"].iloc[0]
    assert beyond["reference"] == "real [strong]"
    assert sentence.count("NO CONCLUSION") == 2 and "changes mean Dice" not in sentence
    assert "Beyond augmentation: NO CONCLUSION, segmenters had not converged" in sentence
    measured = f"; measured {100 * beyond['diff_mean']:+.1f} points vs real [strong] (chosen on validation Dice)"
    assert measured in sentence


def test_when_the_best_augmentation_only_arm_is_the_real_reference_the_comparison_is_not_repeated():
    """real [strong] is both the synthetic [strong] arm's real reference and the best augmentation-only arm."""
    frame = _per_case(0.05).assign(augmentation="standard", converged=True, best_val_dice=0.7)
    strong = frame.assign(augmentation="strong", best_val_dice=0.9)
    strong.loc[strong["arm"] == "real", "dice_mean"] += 0.02
    comparison = compare_to_real(pd.concat([frame, strong], ignore_index=True))
    ours = comparison[(comparison["generator"] == "spade") & (comparison["augmentation"] == "strong")]
    assert set(ours["reference"]) == {"real [strong]"} and len(ours) == 2  # the same pair under both kinds
    sentence = [s for s in headline(comparison) if "spade" in s and "with strong augmentation" in s][0]
    assert sentence.count(" points [95 % CI") == 1
    assert sentence.endswith("; beyond augmentation: the same comparison (real [strong] is the best "
                             "augmentation-only arm, chosen on validation Dice).")
    # unreadable: one NO CONCLUSION, the arm named, no second measured figure
    unconverged = strong.assign(converged=False)
    sentence = [s for s in headline(compare_to_real(pd.concat([frame, unconverged], ignore_index=True)))
                if "spade" in s and "with strong augmentation" in s][0]
    assert sentence.count("NO CONCLUSION") == 1 and sentence.count("measured") == 1
    assert "Beyond augmentation: the same comparison (real [strong] is" in sentence


# ------------------------------------------------------------------ issue 14: draws of training patients
def _drawn(effects: dict[int, float], seeds=(0, 1), n_patients: int = 5) -> pd.DataFrame:
    """One _per_case table per draw (its own effect), stacked with a `draw` column."""
    return pd.concat([_per_case(effect, n_patients=n_patients, seeds=seeds).assign(draw=draw)
                      for draw, effect in effects.items()], ignore_index=True)


def test_hierarchical_bootstrap_matches_a_hand_computation():
    from segmentation.statistics import hierarchical_bootstrap_ci

    groups = [np.array([0.1, -0.2, 0.3]), np.array([0.05, 0.0]), np.array([-0.1, 0.4, 0.2, 0.0])]
    rng, means = np.random.default_rng(7), []
    for _ in range(40):  # draws first, then the patients of each picked draw, in that order
        picked = rng.integers(0, 3, size=3)
        means.append(np.mean([groups[d][rng.integers(0, len(groups[d]), size=len(groups[d]))].mean()
                              for d in picked]))
    alpha = (1 - 0.95) / 2  # the percentile interval, computed as the function computes it
    expected = (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))
    assert hierarchical_bootstrap_ci(groups, n_boot=40, seed=7) == expected
    # one draw: exactly the patient bootstrap
    assert hierarchical_bootstrap_ci(groups[2:], n_boot=40, seed=7) == bootstrap_ci(groups[2], n_boot=40, seed=7)


def test_one_patient_per_draw_is_a_bootstrap_over_draws_and_draw_variance_widens_the_ci():
    from segmentation.statistics import hierarchical_bootstrap_ci

    values = np.array([0.02, -0.01, 0.04, 0.00, 0.03])
    low, high = hierarchical_bootstrap_ci([values[i:i + 1] for i in range(5)], n_boot=4000, seed=1)
    ref_low, ref_high = bootstrap_ci(values, n_boot=4000, seed=1)
    assert low == pytest.approx(ref_low, abs=0.15 * np.ptp(values))  # the same distribution, other draws of it
    assert high == pytest.approx(ref_high, abs=0.15 * np.ptp(values))
    # draws that disagree: the patient bootstrap of the pooled patients is narrower than the hierarchical CI
    groups = [np.full(8, 0.05) + np.linspace(-0.01, 0.01, 8), np.full(8, -0.03) + np.linspace(-0.01, 0.01, 8)]
    h_low, h_high = hierarchical_bootstrap_ci(groups, n_boot=2000, seed=0)
    p_low, p_high = bootstrap_ci((groups[0] + groups[1]) / 2, n_boot=2000, seed=0)
    assert h_high - h_low > 5 * (p_high - p_low)


def test_comparisons_over_draws_pair_within_draw_and_patient():
    from segmentation.statistics import draw_table, hierarchical_bootstrap_ci

    frame = _drawn({0: 0.04, 1: -0.02, 2: 0.01})
    row = compare_to_real(frame, n_boot=300).iloc[0]
    assert row["n_draws"] == 3 and row["draws_positive"] == 2 and row["ci_method"] == "draw -> patient bootstrap"
    per = frame.groupby(["draw", "patient", "arm"])["dice_mean"].mean().unstack("arm")
    diffs = (per["real+synthetic"] - per["real"]).groupby(level="draw")
    expected = hierarchical_bootstrap_ci([g.to_numpy() for _, g in diffs], n_boot=300, seed=0)
    assert (row["ci_low"], row["ci_high"]) == expected
    assert row["n_seeds"] == 6  # the t-test runs over draws x seeds
    runs = frame.groupby(["draw", "seed", "arm"])["dice_mean"].mean().unstack("arm")
    from scipy import stats

    t = stats.ttest_1samp((runs["real+synthetic"] - runs["real"]).to_numpy(), 0.0).pvalue
    assert row["p_ttest_seeds"] == pytest.approx(t, rel=1e-9)
    table = draw_table(frame, n_boot=300)
    assert list(table["draw"]) == [0, 1, 2]
    assert table["diff_mean"].to_numpy() == pytest.approx(diffs.mean().to_numpy(), abs=1e-12)
    assert (table["ci_low"] < table["diff_mean"]).all() and (table["diff_mean"] < table["ci_high"]).all()
    assert "2/3 draws positive" in headline(compare_to_real(frame, n_boot=300))[0]


def test_one_draw_keeps_the_patient_bootstrap_and_says_it_is_one_draw():
    frame = _per_case(0.05)
    row = compare_to_real(frame, n_boot=300).iloc[0]
    per = frame.groupby(["patient", "arm"])["dice_mean"].mean().unstack("arm")
    assert (row["ci_low"], row["ci_high"]) == bootstrap_ci((per["real+synthetic"] - per["real"]).to_numpy(),
                                                           n_boot=300, seed=0)
    assert row["ci_method"] == "patient bootstrap" and row["n_draws"] == 1
    assert "1/1 draws positive (one draw of training patients)" in headline(compare_to_real(frame))[0]
