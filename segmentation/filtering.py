"""Synthetic training pairs the real arm's segmenter segments worst, dropped before a segmenter trains on them.

A synthetic pair is useless, or harmful, where its image does not show what its mask says (a painted heart
too faint or in the wrong place). The segmenter trained on the same real patients without synthetic data
(the *judge*) reads each synthetic slice; the slices on which its labels agree least with the mask are
dropped (`segmentation.synthetic_filter` = the share dropped). The judge never sees a validation or test
patient's mask here: it was chosen on validation Dice and reads synthetic images only.

Agreement is the 2D Dice per slice, averaged over the labels present in the mask or the prediction; a slice
where both are empty agrees fully (1.0), a slice where only one is empty scores 0.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_dice

from data.io import write_csv
from data.types import PreparedCase
from segmentation.evaluate import one_hot, predict_probabilities


def slice_agreement(prediction: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per slice of two (S, H, W) label volumes: mean Dice over the foreground labels either holds (1.0 where
    neither holds any). MONAI's `compute_dice` per slice and label (1 where both are empty, which the mean
    leaves out)."""
    pred, truth = (one_hot(labels)[0].movedim(1, 0).double() for labels in (prediction, mask))  # (S, C, H, W)
    dice = compute_dice(pred, truth, include_background=False, ignore_empty=False)  # (S, labels), float64
    held = (pred[:, 1:].sum(dim=(2, 3)) + truth[:, 1:].sum(dim=(2, 3))) > 0
    mean = (dice * held).sum(dim=1) / held.sum(dim=1).clamp(min=1)
    return torch.where(held.any(dim=1), mean, torch.ones_like(mean)).numpy()


def judge_slices(model: torch.nn.Module, cases: Sequence[PreparedCase], batch_size: int = 16) -> pd.DataFrame:
    """One row per slice of `cases`: case_id, slice, dice (the judge's agreement with the slice's mask)."""
    rows = []
    for case in cases:
        labels = np.argmax(predict_probabilities(model, case.image, batch_size), axis=0)
        for index, dice in enumerate(slice_agreement(labels, np.asarray(case.mask))):
            rows.append({"case_id": case.case_id, "slice": index, "dice": dice})
    return pd.DataFrame(rows, columns=["case_id", "slice", "dice"])


def drop_worst(cases: Sequence[PreparedCase], scores: pd.DataFrame, share: float) -> tuple[list[PreparedCase],
                                                                                           pd.DataFrame]:
    """(the cases holding only their kept slices, `scores` with a `kept` column): the round(share x N) slices
    of lowest Dice dropped (ties: the later slice in `scores` order goes first, so the choice is exact), cases
    left without slices omitted."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share of synthetic slices to drop must be in [0, 1), got {share}")
    order = np.argsort(-scores["dice"].to_numpy(), kind="stable")  # best first; equal scores keep their order
    kept = np.zeros(len(scores), dtype=bool)
    kept[order[:len(scores) - int(round(share * len(scores)))]] = True
    marked = scores.assign(kept=kept)
    filtered = []
    for case in cases:
        rows = marked[marked["case_id"] == case.case_id]
        keep = rows.loc[rows["kept"], "slice"].to_numpy()
        if len(keep) == len(case.image):
            filtered.append(case)
        elif len(keep):
            filtered.append(dataclasses.replace(case, image=np.asarray(case.image[keep]),
                                                mask=np.asarray(case.mask[keep])))
    return filtered, marked


def filter_synthetic(model: torch.nn.Module, cases: Sequence[PreparedCase], share: float,
                     table: Path | str) -> tuple[list[PreparedCase], pd.DataFrame]:
    """(`cases` without the `share` of their slices the judge `model` segments worst, every slice's score and
    whether it was kept), the latter also written to `table` (CSV)."""
    filtered, marked = drop_worst(cases, judge_slices(model, cases), share)
    write_csv(marked, table)
    return filtered, marked
