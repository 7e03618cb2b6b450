"""Is an arm better than `real`, and how sure are we? Paired statistics over test patients and over seeds.

Two sources of variance matter and both are reported:
- patients: per test patient, the metric is averaged over phases and seeds; the paired difference to `real`
  gets a percentile bootstrap 95 % CI (patients resampled) and a Wilcoxon signed-rank p-value;
- seeds: per seed, the metric is averaged over patients; the paired (same seed) differences get their mean,
  sd, the count of positive seeds and a paired t-test p-value (with 3 seeds a rank test cannot go below
  p = 0.25, so a t-test is the usable test there).

With several draws of training patients (`experiment.draws`) the design has a third level, and the draws are the
replicates that matter at low data: which patients a network trains on moves Dice more than its seed does. The
CI then comes from a hierarchical bootstrap (draws resampled, then test patients within each resampled draw,
`hierarchical_bootstrap_ci`), the t-test runs over the (draw, seed) runs, and the positive draws are counted;
`draw_table` gives each draw's own difference with its patient-bootstrap CI (the report's forest plot).

A difference between networks that never converged, or against a real arm that segments badly, is noise with
a confidence interval. When `per_case` carries the segmenters' `converged` flags (the evaluate stage adds
them from each metrics.csv), every comparison says whether both arms converged and whether the real arm
reached `real_dice_floor`; the headline then reports the number as not evidence instead of a gain or loss.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

CONDITION = ["fraction", "arm", "generator", "augmentation"]
RUN = ["draw", "seed"]  # one segmenter of a condition: its draw of training patients and its seed
STANDARD = "standard"  # the augmentation a run without the `augmentation` column used


def condition_label(arm: str, generator: str | None, augmentation: str | None = None) -> str:
    label = arm if arm == "real" or not generator else f"{arm} ({generator})"
    return label if not augmentation or augmentation == STANDARD else f"{label} [{augmentation}]"


def with_conditions(per_case: pd.DataFrame) -> pd.DataFrame:
    """`per_case` with every CONDITION column filled ('' generator for the real arm, standard augmentation for
    tables written before augmentation settings existed) and its `draw` (0 for tables from before draws)."""
    frame = per_case.copy()
    frame["draw"] = frame["draw"].fillna(0).astype(int) if "draw" in frame else 0
    frame["generator"] = frame["generator"].fillna("").astype(str) if "generator" in frame else ""
    frame["augmentation"] = frame["augmentation"].fillna(STANDARD).astype(str) if "augmentation" in frame \
        else STANDARD
    return frame


def compare_to_real(per_case: pd.DataFrame, metric: str = "dice_mean", *, n_boot: int = 2000,
                    seed: int = 0, real_dice_floor: float = 0.0,
                    augmentation_only: frozenset[str] | set[str] = frozenset()) -> pd.DataFrame:
    """Paired differences in `metric`, one row per fraction x condition x reference (column `reference_kind`):

    - `real`: every condition other than the baseline (the real arm with standard augmentation, else the first
      one) against the real arm with its own augmentation, or against the baseline when it is a real arm itself
      (so `real [strong]` vs `real` reads as the effect of strong augmentation);
    - `best augmentation-only`: every synthetic condition against the best arm that adds no new images: a real
      arm under any augmentation, or a generator in `augmentation_only` (e.g. `warp`: real slices deformed).
      "Best" is chosen by the validation patients' Dice (`best_val_dice`, mean over seeds), never by the test
      patients; without validation scores the baseline is used.

    `caveat` is '' when the comparison can be read, else why not (segmenters not converged, real arm below
    the floor)."""
    frame = with_conditions(per_case)
    rows = []
    for fraction, at_fraction in frame.groupby("fraction"):
        groups = {key: rows_ for key, rows_ in at_fraction.groupby(["arm", "generator", "augmentation"])}
        reals = {aug: g for (arm, _, aug), g in groups.items() if arm == "real"}
        if not reals:
            continue
        base_aug = STANDARD if STANDARD in reals else sorted(reals)[0]
        baseline = ("real", "", base_aug)
        only = [k for k in groups if k[0] == "real" or k[1] in augmentation_only]
        best = max(only, key=lambda k: _validation_score(groups[k])) if _has_validation(frame) else baseline
        for key, other in groups.items():
            if key == baseline:
                continue
            arm, generator, aug = key
            ref = ("real", "", aug) if arm != "real" and aug in reals else baseline
            references = [("real", ref)]
            if key not in only:
                references.append(("best augmentation-only", best))
            for kind, ref_key in references:
                floor_ref = groups[ref_key] if ref_key[0] == "real" else groups[baseline]
                rows.append({"fraction": fraction, "arm": arm, "generator": generator, "augmentation": aug,
                             "reference_kind": kind, "reference": condition_label(*ref_key),
                             **paired_difference(other, groups[ref_key], metric, n_boot=n_boot, seed=seed),
                             **trust(floor_ref, pd.concat([other, groups[ref_key]]), real_dice_floor)})
    return pd.DataFrame(rows)


def _has_validation(frame: pd.DataFrame) -> bool:
    return "best_val_dice" in frame and frame["best_val_dice"].notna().any()


def _validation_score(rows: pd.DataFrame) -> float:
    """Mean over draws and seeds of a condition's best validation Dice (one value per segmenter)."""
    return float(rows.groupby(RUN)["best_val_dice"].first().mean())


def paired_difference(other: pd.DataFrame, reference: pd.DataFrame, metric: str = "dice_mean", *,
                      n_boot: int = 2000, seed: int = 0) -> dict[str, object]:
    """`other - reference` in `metric`, paired by test patient (bootstrap CI, Wilcoxon) and by run (draw x seed:
    t-test). With several draws the CI is `hierarchical_bootstrap_ci` over the per-draw patient differences."""
    ref_by_patient = reference.groupby("patient")[metric].mean()
    by_patient = other.groupby("patient")[metric].mean()
    patients = ref_by_patient.index.intersection(by_patient.index)
    diff = (by_patient[patients] - ref_by_patient[patients]).to_numpy()
    reference, other = with_conditions(reference), with_conditions(other)
    ref_by_seed, by_seed = reference.groupby(RUN)[metric].mean(), other.groupby(RUN)[metric].mean()
    seeds = ref_by_seed.index.intersection(by_seed.index)
    seed_diff = (by_seed[seeds] - ref_by_seed[seeds]).to_numpy()
    per_draw = _draw_patient_diffs(other, reference, metric)
    draw_diff = np.array([d.mean() for d in per_draw])
    if len(per_draw) > 1:
        low, high = hierarchical_bootstrap_ci(per_draw, n_boot=n_boot, seed=seed)
    else:
        low, high = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    return {
        "metric": metric, "n_patients": len(patients), "n_seeds": len(seeds),
        "reference_mean": float(ref_by_patient[patients].mean()) if len(patients) else np.nan,
        "arm_mean": float(by_patient[patients].mean()) if len(patients) else np.nan,
        "diff_mean": float(diff.mean()) if len(diff) else np.nan,
        "ci_low": low, "ci_high": high,
        "p_wilcoxon_patients": wilcoxon_p(diff),
        "seed_diffs": ";".join(f"{d:+.4f}" for d in seed_diff),
        "seed_diff_sd": float(seed_diff.std(ddof=1)) if len(seed_diff) > 1 else np.nan,
        "seeds_positive": int((seed_diff > 0).sum()),
        "p_ttest_seeds": ttest_p(seed_diff),
        "n_draws": len(per_draw), "draws_positive": int((draw_diff > 0).sum()),
        "draw_diffs": ";".join(f"{d:+.4f}" for d in draw_diff),
        "ci_method": "draw -> patient bootstrap" if len(per_draw) > 1 else "patient bootstrap",
    }


def _draw_patient_diffs(other: pd.DataFrame, reference: pd.DataFrame, metric: str) -> list[np.ndarray]:
    """Per draw (in draw order): the paired difference per test patient, each side averaged over its seeds and
    phases within that draw."""
    ref = reference.groupby(["draw", "patient"])[metric].mean()
    mine = other.groupby(["draw", "patient"])[metric].mean()
    both = (mine - ref).dropna()
    return [group.to_numpy() for _, group in both.groupby(level="draw", sort=True)]


def hierarchical_bootstrap_ci(groups: list[np.ndarray], *, n_boot: int = 2000, seed: int = 0,
                              level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the mean over draws of each draw's mean patient difference (`groups`: one array of paired
    patient differences per draw), resampling both levels: per resample, `rng.integers(0, D, D)` picks D draws,
    then for each picked draw in turn `rng.integers(0, P, P)` picks P of its patients. Resampling the draws is what
    carries the draw-to-draw variance into the interval; a patient bootstrap alone would ignore it."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if len(groups) < 2:
        return bootstrap_ci(groups[0] if groups else np.array([]), n_boot=n_boot, seed=seed, level=level)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(0, len(groups), size=len(groups))
        means[b] = np.mean([groups[d][rng.integers(0, len(groups[d]), size=len(groups[d]))].mean()
                            for d in picked])
    return percentile_ci(means, level)


def draw_table(per_case: pd.DataFrame, metric: str = "dice_mean", *, n_boot: int = 2000,
               real_dice_floor: float = 0.0) -> pd.DataFrame:
    """Per fraction x draw x condition: the paired difference to `real` on that draw alone (patient-bootstrap CI,
    t-test over its seeds): the rows of the forest plot, so a reader sees whether the effect is consistent."""
    frame = with_conditions(per_case)
    tables = [compare_to_real(rows, metric, n_boot=n_boot, real_dice_floor=real_dice_floor).assign(draw=draw)
              for draw, rows in frame.groupby("draw", sort=True)]
    tables = [t[t["reference_kind"] == "real"] for t in tables if len(t)]
    if not tables:
        return pd.DataFrame(columns=["fraction", "draw"])
    out = pd.concat(tables, ignore_index=True).drop(columns=["n_draws", "draws_positive", "draw_diffs", "ci_method"])
    first = ["fraction", "draw", "arm", "generator", "augmentation"]
    return out[first + [c for c in out.columns if c not in first]].sort_values(first, kind="stable")


def trust(real: pd.DataFrame, compared: pd.DataFrame, real_dice_floor: float) -> dict[str, object]:
    """Whether a comparison can be read as an effect: every segmenter in `compared` (both sides) converged, and
    the real arm `real` reaches `real_dice_floor`."""
    converged = bool(compared["converged"].astype(bool).all()) if "converged" in compared else True
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
    return percentile_ci(means, level)


def percentile_ci(means: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of bootstrap resample means."""
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
    """Mean over patients per condition, draw and seed, then mean ± sd over the seeds of each draw."""
    frame = with_conditions(per_case)
    per_seed = frame.groupby(CONDITION + RUN)[metric].mean().reset_index()
    out = per_seed.groupby(CONDITION + ["draw"])[metric].agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"mean": f"{metric}_mean", "std": f"{metric}_sd", "count": "n_seeds"})
    if "converged" in frame:  # per segmenter (condition x draw x seed): how many of the seeds had converged
        status = frame.groupby(CONDITION + RUN).agg(converged=("converged", "all"),
                                                    final_val_dice=("final_val_dice", "first"),
                                                    best_val_dice=("best_val_dice", "first"))
        counts = status.groupby(CONDITION + ["draw"]).agg(
            n_converged=("converged", "sum"), final_val_dice_mean=("final_val_dice", "mean"),
            best_val_dice_mean=("best_val_dice", "mean")).reset_index()
        out = out.merge(counts, on=CONDITION + ["draw"], how="left")
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
            keep = ["reference", "diff_mean", "ci_low", "ci_high", "p_wilcoxon_patients", "seeds_positive",
                    "n_seeds", "p_ttest_seeds"]
            versus_real = comparison[comparison["reference_kind"] == "real"]
            table = table.merge(versus_real[CONDITION + keep].rename(columns={"n_seeds": "n_seeds_paired"}),
                                on=CONDITION, how="left")
        rows.append(table.assign(test_set=name, n_patients=frame["patient"].nunique()))
    if not rows:
        return pd.DataFrame(columns=["test_set"] + CONDITION)
    out = pd.concat(rows, ignore_index=True)
    return out[["test_set"] + [c for c in out.columns if c != "test_set"]]


def headline(comparison: pd.DataFrame) -> list[str]:
    """One sentence per fraction x condition, the form the report leads with: the difference to `real` and,
    for a synthetic arm, "beyond augmentation" (to the best augmentation-only arm). A comparison with a `caveat`
    is reported as not evidence, with the reason, instead of as a gain or loss; the beyond-augmentation figure is
    stated even when the comparison with `real` cannot be read, since it is the one a synthetic arm must pass."""
    frame = with_conditions(comparison)
    if "reference_kind" not in frame:
        frame["reference_kind"] = "real"
    sentences = []
    for key, rows in frame.groupby(CONDITION, sort=False):
        fraction, arm, generator, augmentation = key
        versus = {r.reference_kind: r for r in rows.itertuples()}
        row = versus.get("real", rows.iloc[0])
        what = _subject(arm, generator, augmentation)
        start = f"With {fraction:.0%} of the real training patients, {what}"
        beyond = versus.get("best augmentation-only")
        if _caveat(row):
            sentence = (f"{start}: NO CONCLUSION, {_caveat(row)}. The measured difference ({100 * row.diff_mean:+.1f} "
                        f"points vs {row.reference} over {row.n_patients} test patients) is not evidence of a gain or "
                        f"a loss; train longer (segmentation.steps) and re-run")
            # the comparison the product's question turns on is still stated, as a measurement, never as a finding
            sentences.append(sentence + (f". Beyond augmentation: {_beyond(beyond, row)}" if beyond is not None else "")
                             + ".")
            continue
        sentence = f"{start} changes mean Dice by {_effect(row)} vs {row.reference}"
        sentences.append(sentence + (f"; beyond augmentation: {_beyond(beyond, row)}" if beyond is not None else "")
                         + ".")
    return sentences


def _beyond(row, versus_real) -> str:
    """The clause for a synthetic arm against the best augmentation-only arm, judged on its own segmenters; when
    that arm is the `real` reference itself, the comparison was just stated and is named, not repeated."""
    if row.reference == versus_real.reference:
        return f"the same comparison ({row.reference} is the best augmentation-only arm, chosen on validation Dice)"
    if _caveat(row):
        return (f"NO CONCLUSION, {_caveat(row)}; measured {100 * row.diff_mean:+.1f} points vs {row.reference} "
                f"(chosen on validation Dice)")
    return f"{_effect(row)} vs the best augmentation-only arm ({row.reference}, chosen on validation Dice)"


def _caveat(row) -> str:
    """Why a comparison row is not evidence ('' when it can be read)."""
    caveat = getattr(row, "caveat", "")
    return caveat if isinstance(caveat, str) else ""


def _subject(arm: str, generator: str, augmentation: str) -> str:
    if arm == "real":
        return f"{augmentation} augmentation of the real arm"
    return f"{generator} {arm} data" + ("" if augmentation == STANDARD else f" (with {augmentation} augmentation)")


def _effect(row) -> str:
    n_draws = int(getattr(row, "n_draws", 1) or 1)
    draws = f"{int(getattr(row, 'draws_positive', int(row.diff_mean > 0)))}/{n_draws} draws positive"
    if n_draws > 1:
        return (f"{100 * row.diff_mean:+.1f} points [95 % CI {100 * row.ci_low:+.1f}, {100 * row.ci_high:+.1f}, "
                f"bootstrap over draws, then test patients], {draws} of training patients, "
                f"{row.seeds_positive}/{row.n_seeds} draw x seed runs positive, t-test over them "
                f"p={_fmt_p(row.p_ttest_seeds)}, Wilcoxon p={_fmt_p(row.p_wilcoxon_patients)} over "
                f"{row.n_patients} test patients")
    return (f"{100 * row.diff_mean:+.1f} points [95 % CI {100 * row.ci_low:+.1f}, {100 * row.ci_high:+.1f}], "
            f"Wilcoxon p={_fmt_p(row.p_wilcoxon_patients)} over {row.n_patients} test patients, "
            f"{row.seeds_positive}/{row.n_seeds} seeds positive, t-test over seeds p={_fmt_p(row.p_ttest_seeds)}, "
            f"{draws} (one draw of training patients)")


def _fmt_p(p: float) -> str:
    return "n/a" if p is None or np.isnan(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")
