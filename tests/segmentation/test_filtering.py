"""The judge filter: synthetic slices whose image does not show their mask are the ones dropped."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from segmentation.filtering import drop_worst, filter_synthetic, judge_slices, slice_agreement
from tests.segmentation.cases import OracleNet, prepared_case


def test_agreement_is_the_mean_dice_over_the_labels_either_slice_holds():
    truth = np.zeros((4, 4, 4), np.uint8)
    pred = np.zeros_like(truth)
    # slice 0: both empty -> 1; slice 1: mask holds LV, prediction nothing -> 0
    truth[1, :2, :2] = 3
    # slice 2: LV 4 px vs 2 px overlapping on 2 -> 2*2/6; RV only predicted -> 0; mean of the two
    truth[2, :2, :2], pred[2, :1, :2], pred[2, 3, 3] = 3, 3, 1
    # slice 3: identical, two labels -> 1
    truth[3, 0, :2], truth[3, 2, :] = 1, 2
    pred[3] = truth[3]
    np.testing.assert_allclose(slice_agreement(pred, truth), [1.0, 0.0, (4 / 6 + 0.0) / 2, 1.0])


@pytest.fixture()
def spoiled():
    """Three label-image cases (image = mask / 3, which `OracleNet` reads back exactly); in two slices the
    painted heart is missing (image blanked) while the mask still holds it: the pairs a judge must catch."""
    cases = [prepared_case(f"synth{i}", label_image=True, seed=i, shape=(32, 32, 4)) for i in range(3)]
    bad = {("synth0_ED", 1), ("synth2_ED", 3)}
    out = []
    for case in cases:
        image = np.array(case.image)
        for case_id, index in bad:
            if case_id == case.case_id:
                assert case.mask[index].any()
                image[index] = 0.0
        out.append(dataclasses.replace(case, image=image))
    return out, bad


def test_the_judge_drops_exactly_the_slices_whose_image_lost_the_heart(spoiled, tmp_path):
    cases, bad = spoiled
    n = sum(len(c.image) for c in cases)
    filtered, marked = filter_synthetic(OracleNet(), cases, len(bad) / n, tmp_path / "synthetic_filter.csv")
    dropped = set(marked.loc[~marked["kept"], ["case_id", "slice"]].itertuples(index=False, name=None))
    assert dropped == bad
    assert marked.loc[marked["kept"], "dice"].min() == 1.0 and marked.loc[~marked["kept"], "dice"].max() == 0.0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "synthetic_filter.csv"), marked)
    # the kept slices, image with its own mask, in their order
    by_id = {c.case_id: c for c in cases}
    for case in filtered:
        keep = [s for s in range(len(by_id[case.case_id].image)) if (case.case_id, s) not in bad]
        np.testing.assert_array_equal(case.image, by_id[case.case_id].image[keep])
        np.testing.assert_array_equal(case.mask, by_id[case.case_id].mask[keep])
    assert sum(len(c.image) for c in filtered) == n - len(bad)


def test_dropping_nothing_keeps_every_case_itself_and_a_case_without_slices_left_goes(spoiled):
    cases, _ = spoiled
    scores = judge_slices(OracleNet(), cases)
    kept, marked = drop_worst(cases, scores, 0.0)
    assert all(a is b for a, b in zip(kept, cases)) and marked["kept"].all()
    worst_first = scores.assign(dice=np.where(scores["case_id"] == "synth1_ED", -1.0, scores["dice"]))
    kept, _ = drop_worst(cases, worst_first, 4 / len(scores))  # synth1's four slices are the worst
    assert [c.case_id for c in kept] == ["synth0_ED", "synth2_ED"]
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        drop_worst(cases, scores, 1.0)
