"""A swept knob's value chosen on the validation patients only (`experiment.select_on`).

A study that tries several values of a knob (e.g. the synthetic share) and keeps the one that scores best on
the test patients inflates its winner: the largest of several noisy estimates is biased upwards, and the test
set then no longer tests anything. Here the value is chosen per fraction x draw x arm x generator x
augmentation from the segmenters' best validation Dice (measured on the validation patients during training,
mean over seeds); the test scores of every value tried stay on record (evaluate/variants.csv) but are never
read for the choice.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from segmentation.statistics import with_conditions

KNOB = "synthetic_ratio"  # the per_case column of the swept value (experiment.synthetic_ratios)
GROUP = ["fraction", "draw", "arm", "generator", "augmentation"]  # one choice per group
ON_VALIDATION = "validation Dice (each segmenter's best, mean over seeds)"


def select_variants(per_case: pd.DataFrame, *, select_on: str = "val", default: float | None = None,
                    knob: str = KNOB) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rows of `per_case` whose `knob` value was chosen in their group, one row per group that had a
    choice: the values tried, their validation scores, the value chosen and on what).

    `select_on`: "val" picks the value with the highest mean over seeds of `best_val_dice` (ties: the smaller
    value); "none" keeps `default` (fixed in advance). A group without validation scores keeps `default` where
    it was tried, else its first value, and says so. `per_case` must hold `best_val_dice` for "val"; the test
    columns (dice_*) are never read here."""
    if knob not in per_case or per_case.empty:
        return per_case, pd.DataFrame(columns=GROUP + ["knob", "chosen"])
    frame = with_conditions(per_case)
    keep = pd.Series(False, index=frame.index)
    rows = []
    for key, group in frame.groupby(GROUP, sort=True):
        values = sorted(group[knob].unique())
        if len(values) == 1:
            keep[group.index] = True
            continue
        scores = group.groupby([knob, "seed"])["best_val_dice"].first().groupby(level=0).mean() \
            if "best_val_dice" in group else pd.Series(np.nan, index=values)
        if select_on == "val" and scores.notna().any():
            chosen, how = float(scores.idxmax()), ON_VALIDATION
        elif select_on == "val":
            chosen = default if default in values else values[0]
            how = "no validation scores (segmentation.val_every > steps?): " + (
                "segmentation.synthetic_ratio kept" if default in values else "the first value kept")
        else:
            if default not in values:
                raise ValueError(f"select_on none keeps {knob} = {default}, which was not tried ({values})")
            chosen, how = default, "fixed in advance (segmentation.synthetic_ratio; experiment.select_on = none)"
        keep[group.index] = group[knob] == chosen
        rows.append({**dict(zip(GROUP, key)), "knob": knob, "values": ";".join(f"{v:g}" for v in values),
                     "val_dice": ";".join(f"{v:g}: {scores.get(v, np.nan):.4f}" for v in values),
                     "chosen": chosen, "chosen_on": how, "n_seeds": int(group["seed"].nunique())})
    return per_case[keep.to_numpy()], pd.DataFrame(rows, columns=GROUP + [
        "knob", "values", "val_dice", "chosen", "chosen_on", "n_seeds"])
