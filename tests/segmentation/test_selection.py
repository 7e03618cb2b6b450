"""A swept knob chosen on the validation patients only (experiment.select_on, issue 14)."""
from __future__ import annotations

import pandas as pd
import pytest

from segmentation.selection import ON_VALIDATION, select_variants


def constructed(val: dict[float, float], test: dict[float, float], *, draws=(0,), seeds=(0, 1)) -> pd.DataFrame:
    """per_case rows of one real+synthetic condition tried at several shares: `val` sets each share's
    best_val_dice, `test` its test Dice (4 patients x 2 phases, identical per seed)."""
    rows = []
    for draw in draws:
        for share in val:
            for seed in seeds:
                for patient in range(4):
                    for phase in ("ED", "ES"):
                        rows.append({"patient": f"p{patient}", "phase": phase, "fraction": 0.5, "draw": draw,
                                     "arm": "real+synthetic", "generator": "gmm", "augmentation": "standard",
                                     "synthetic_ratio": share, "seed": seed, "dice_mean": test[share],
                                     "best_val_dice": val[share] + 0.001 * seed})
    return pd.DataFrame(rows)


def test_validation_picks_its_share_even_where_the_test_patients_would_pick_another():
    per_case = constructed(val={0.2: 0.81, 0.5: 0.78}, test={0.2: 0.70, 0.5: 0.90})
    chosen, selection = select_variants(per_case, select_on="val", default=0.5)
    assert set(chosen["synthetic_ratio"]) == {0.2}  # the test set would have picked 0.5
    assert len(chosen) == len(per_case) // 2 and chosen.index.isin(per_case.index).all()
    row = selection.iloc[0]
    assert row["chosen"] == 0.2 and row["chosen_on"] == ON_VALIDATION and row["values"] == "0.2;0.5"
    assert row["val_dice"] == "0.2: 0.8105;0.5: 0.7805" and row["n_seeds"] == 2


def test_the_choice_ignores_the_test_columns():
    per_case = constructed(val={0.2: 0.81, 0.5: 0.78}, test={0.2: 0.70, 0.5: 0.90})
    shuffled = per_case.assign(dice_mean=per_case["dice_mean"].sample(frac=1, random_state=0).to_numpy())
    a, _ = select_variants(per_case, default=0.5)
    b, _ = select_variants(shuffled, default=0.5)
    assert a.index.equals(b.index)


def test_each_draw_gets_its_own_choice():
    draw0 = constructed(val={0.2: 0.81, 0.5: 0.78}, test={0.2: 0.7, 0.5: 0.9}, draws=(0,))
    draw1 = constructed(val={0.2: 0.70, 0.5: 0.75}, test={0.2: 0.7, 0.5: 0.9}, draws=(1,))
    chosen, selection = select_variants(pd.concat([draw0, draw1], ignore_index=True), default=0.5)
    assert chosen.groupby("draw")["synthetic_ratio"].unique().map(list).to_dict() == {0: [0.2], 1: [0.5]}
    assert list(selection["chosen"]) == [0.2, 0.5]


def test_select_on_none_keeps_the_share_fixed_in_advance():
    per_case = constructed(val={0.2: 0.81, 0.5: 0.78}, test={0.2: 0.70, 0.5: 0.90})
    chosen, selection = select_variants(per_case, select_on="none", default=0.5)
    assert set(chosen["synthetic_ratio"]) == {0.5} and "fixed in advance" in selection.iloc[0]["chosen_on"]
    with pytest.raises(ValueError, match="not tried"):
        select_variants(per_case, select_on="none", default=0.3)


def test_conditions_with_one_value_pass_through_and_record_no_choice():
    per_case = constructed(val={0.5: 0.8}, test={0.5: 0.9})
    chosen, selection = select_variants(per_case, default=0.5)
    assert chosen.equals(per_case) and selection.empty
