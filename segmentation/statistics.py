"""Is an arm better than `real`, and how sure are we? Paired statistics over test patients and over seeds.

Two sources of variance matter and both are reported:
- patients: per test patient, the metric is averaged over phases and seeds; the paired difference to `real`
  gets a percentile bootstrap 95 % CI (patients resampled) and a Wilcoxon signed-rank p-value;
- seeds: per seed, the metric is averaged over patients; the paired (same seed) differences get their mean,
  sd, the count of positive seeds and a paired t-test p-value (with 3 seeds a rank test cannot go below
  p = 0.25, so a t-test is the usable test there).

A difference between networks that never converged, or against a real arm that segments badly, is noise with
a confidence interval. When `per_case` carries the segmenters' `converged` flags (the evaluate stage adds
them from each metrics.csv), every comparison says whether both arms converged and whether the real arm
reached `real_dice_floor`; the headline then reports the number as not evidence instead of a gain or loss.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

CONDITION = ["fraction", "arm", "generator"]


def condition_label(arm: str, generator: str | None) -> str:
    return arm if arm == "real" or not generator else f"{arm} ({generator})"


def compare_to_real(per_case: pd.DataFrame, metric: str = "dice_mean", *, n_boot: int = 2000,
                    seed: int = 0, real_dice_floor: float = 0.0) -> pd.DataFrame:
    """One row per fraction x non-real arm: the paired difference `arm - real` in `metric`, and `caveat`:
    '' when the comparison can be trusted, else why not (segmenters not converged, real arm below the floor)."""
    frame = per_case.copy()
    frame["generator"] = frame["generator"].fillna("")
    rows = []
    for fraction, at_fraction in frame.groupby("fraction"):
        real = at_fraction[at_fraction["arm"] == "real"]
        if real.empty:
            continue
        real_by_patient = real.groupby("patient")[metric].mean()
        real_by_seed = real.groupby("seed")[metric].mean()
        for (arm, generator), other in at_fraction[at_fraction["arm"] != "real"].groupby(["arm", "generator"]):
            by_patient = other.groupby("patient")[metric].mean()
            patients = real_by_patient.index.intersection(by_patient.index)
            diff = (by_patient[patients] - real_by_patient[patients]).to_numpy()
            by_seed = other.groupby("seed")[metric].mean()
            seeds = real_by_seed.index.intersection(by_seed.index)
            seed_diff = (by_seed[seeds] - real_by_seed[seeds]).to_numpy()
            low, high = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
            rows.append({
                "fraction": fraction, "arm": arm, "generator": generator, "metric": metric,
                "n_patients": len(patients), "n_seeds": len(seeds),
                "real_mean": float(real_by_patient[patients].mean()) if len(patients) else np.nan,
                "arm_mean": float(by_patient[patients].mean()) if len(patients) else np.nan,
                "diff_mean": float(diff.mean()) if len(diff) else np.nan,
                "ci_low": low, "ci_high": high,
                "p_wilcoxon_patients": wilcoxon_p(diff),
                "seed_diffs": ";".join(f"{d:+.4f}" for d in seed_diff),
                "seed_diff_sd": float(seed_diff.std(ddof=1)) if len(seed_diff) > 1 else np.nan,
                "seeds_positive": int((seed_diff > 0).sum()),
                "p_ttest_seeds": ttest_p(seed_diff),
                **trust(real, other, real_dice_floor),
            })
    return pd.DataFrame(rows)


def trust(real: pd.DataFrame, other: pd.DataFrame, real_dice_floor: float) -> dict[str, object]:
    """Whether a comparison of `other` with `real` (their per-case rows) can be read as an effect."""
    both = pd.concat([real, other])
    converged = bool(both["converged"].astype(bool).all()) if "converged" in both else True
    real_dice = float(real.groupby("patient")["dice_mean"].mean().mean()) if "dice_mean" in real else np.nan
    below = bool(real_dice < real_dice_floor)
    reasons = ([] if converged else ["segmenters had not converged (validation Dice still rising)"]) + \
        ([f"the real arm's mean Dice {real_dice:.3f} is below the floor {real_dice_floor:g}"] if below else [])
    return {"converged": converged, "real_below_floor": below, "caveat": "; ".join(reasons)}


def bootstrap_ci(diff: np.ndarray, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    diff = np.asarray(diff, dtype=float)
    if len(diff) < 2:
        return (np.nan, np.nan)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def wilcoxon_p(diff: np.ndarray) -> float:
    diff = np.asarray(diff, dtype=float)
    if len(diff) < 2 or np.allclose(diff, 0):
        return np.nan if len(diff) < 2 else 1.0
    return float(stats.wilcoxon(diff).pvalue)


def ttest_p(diff: np.ndarray) -> float:
    diff = np.asarray(diff, dtype=float)
    if len(diff) < 2 or np.allclose(diff, diff[0]):
        return np.nan
    return float(stats.ttest_1samp(diff, 0.0).pvalue)


def seed_table(per_case: pd.DataFrame, metric: str = "dice_mean") -> pd.DataFrame:
    """Mean over patients per condition and seed, then mean ± sd over seeds."""
    frame = per_case.copy()
    frame["generator"] = frame["generator"].fillna("")
    per_seed = frame.groupby(CONDITION + ["seed"])[metric].mean().reset_index()
    out = per_seed.groupby(CONDITION)[metric].agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"mean": f"{metric}_mean", "std": f"{metric}_sd", "count": "n_seeds"})
    if "converged" in frame:  # per segmenter (condition x seed): how many of the seeds had converged
        status = frame.groupby(CONDITION + ["seed"]).agg(converged=("converged", "all"),
                                                         final_val_dice=("final_val_dice", "first"))
        counts = status.groupby(CONDITION).agg(n_converged=("converged", "sum"),
                                               final_val_dice_mean=("final_val_dice", "mean")).reset_index()
        out = out.merge(counts, on=CONDITION, how="left")
        out["n_converged"] = out["n_converged"].astype(int)
    return out


def robustness_table(per_case: pd.DataFrame, per_case_extra: pd.DataFrame, metric: str = "dice_mean", *,
                     n_boot: int = 2000, primary: str = "test (in-domain)") -> pd.DataFrame:
    """Per test set (the primary one first, then each extra one) x condition: mean ± sd over seeds and the
    paired difference to `real` on that set, so "synthetic data makes the segmenter more robust" can be
    read as a difference that grows off-domain, not assumed."""
    sets = [(primary, per_case)] if len(per_case) else []
    if len(per_case_extra):
        sets += list(per_case_extra.groupby("test_set", sort=False))
    rows = []
    for name, frame in sets:
        table = seed_table(frame, metric)
        comparison = compare_to_real(frame, metric, n_boot=n_boot)
        if len(comparison):
            keep = ["diff_mean", "ci_low", "ci_high", "p_wilcoxon_patients", "seeds_positive", "n_seeds",
                    "p_ttest_seeds"]
            table = table.merge(comparison[CONDITION + keep].rename(columns={"n_seeds": "n_seeds_paired"}),
                                on=CONDITION, how="left")
        rows.append(table.assign(test_set=name, n_patients=frame["patient"].nunique()))
    if not rows:
        return pd.DataFrame(columns=["test_set"] + CONDITION)
    out = pd.concat(rows, ignore_index=True)
    return out[["test_set"] + [c for c in out.columns if c != "test_set"]]


def headline(comparison: pd.DataFrame) -> list[str]:
    """One sentence per fraction x arm, the form the report leads with; a comparison with a `caveat` is
    reported as not evidence, with the reason, instead of as a gain or loss."""
    sentences = []
    for row in comparison.itertuples():
        name = row.generator or row.arm
        caveat = getattr(row, "caveat", "")
        if isinstance(caveat, str) and caveat:
            sentences.append(
                f"With {row.fraction:.0%} of the real training patients, {name} {row.arm} data: NO CONCLUSION, "
                f"{caveat}. The measured difference ({100 * row.diff_mean:+.1f} points over {row.n_patients} "
                f"test patients) is not evidence of a gain or a loss; train longer (segmentation.steps) and "
                f"re-run.")
            continue
        sentences.append(
            f"With {row.fraction:.0%} of the real training patients, {name} {row.arm} data changes mean Dice by "
            f"{100 * row.diff_mean:+.1f} points [95 % CI {100 * row.ci_low:+.1f}, {100 * row.ci_high:+.1f}], "
            f"Wilcoxon p={_fmt_p(row.p_wilcoxon_patients)} over {row.n_patients} test patients; "
            f"{row.seeds_positive}/{row.n_seeds} seeds positive, t-test over seeds p={_fmt_p(row.p_ttest_seeds)}.")
    return sentences


def _fmt_p(p: float) -> str:
    return "n/a" if p is None or np.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")
