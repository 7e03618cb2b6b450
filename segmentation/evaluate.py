"""Test-time evaluation in 3D on the ORIGINAL voxel grid, with the ACDC challenge's metrics and clinical indices.

Predictions are made slice by slice on the prepared grid, mapped back with
`data.preprocess.to_original_probabilities` (linear interpolation of the softmax, then argmax) and compared
with the ground-truth mask as read from its file, so preprocessing can never flatter a score.

Conventions (the same for every arm, so comparisons stay fair):
- Dice per structure (MONAI `DiceMetric`, `ignore_empty=False`): both prediction and truth empty -> 1,
  exactly one empty -> 0.
- HD95 in mm (MONAI `HausdorffDistanceMetric(percentile=95)` with the case's voxel spacing): both empty ->
  0; exactly one empty -> the diagonal of the image volume in mm (the largest distance the image can hold),
  a finite worst-case penalty that keeps means and SDs defined. `hd95_missing_*` flags those cases.
- Volumes in ml from the voxel count x voxel volume of the original grid.
- Clinical indices per patient (needs ED and ES): EF = (EDV - ESV) / EDV x 100 for LV and RV, and LV
  myocardial mass = MYO volume at ED x 1.05 g/ml. They are patient-level numbers, merged onto both phase rows
  of that patient (`PATIENT_COLUMNS`); `patient_level()` gives one row per patient, and `summarize` uses it.
"""
from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from tqdm import tqdm

from data.io import write_nifti
from data.parallel import process_map
from data.types import NUM_CLASSES, STRUCTURES, DataError, PreparedCase
from segmentation.runtime import torch_threads

MYOCARDIAL_DENSITY_G_PER_ML = 1.05
KEYS = ["arm", "fraction", "seed", "patient"]
PATIENT_COLUMNS = [f"{kind}_{s}_{what}" for kind, s in (("ef", "LV"), ("ef", "RV"), ("mass", "MYO"))
                   for what in ("pred", "true", "err", "abs_err")]


# ------------------------------------------------------------------------------------------- prediction


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict_probabilities(model: torch.nn.Module, image: np.ndarray, batch_size: int = 16, *,
                          autocast: bool = False) -> np.ndarray:
    """Softmax of the network on each slice of an (S, H, W) image -> (C, S, H, W) float32."""
    device = _model_device(model)
    model.eval()
    chunks = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for start in range(0, len(image), batch_size):
            # A copy per batch: `image` may be a read-only memory map (data.cache), which torch will not wrap.
            x = torch.from_numpy(np.array(image[start:start + batch_size, None], dtype=np.float32))
            logits = model(x.to(device))
            chunks.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(chunks).permute(1, 0, 2, 3).contiguous().numpy()


def predict_case(model: torch.nn.Module, case: PreparedCase, batch_size: int = 16, *,
                 autocast: bool = False) -> np.ndarray:
    """Labels (uint8, 0..3) on the case's ORIGINAL voxel grid (pairs with `case.geometry.affine`)."""
    from data.preprocess import to_original_probabilities

    probs = predict_probabilities(model, case.image, batch_size, autocast=autocast)
    return np.argmax(to_original_probabilities(probs, case.geometry), axis=0).astype(np.uint8)


def one_hot(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(spatial...) integer labels -> (1, C, spatial...) float one-hot, MONAI's metric input layout."""
    labels = torch.from_numpy(np.array(labels, dtype=np.int64))  # a copy: `labels` may be read-only (data.cache)
    return torch.nn.functional.one_hot(labels, NUM_CLASSES).movedim(-1, 0)[None].float()


# -------------------------------------------------------------------------------------------- metrics


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Largest distance inside the image: the HD95 given to a structure present in only one of two masks."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


class StructureMetrics:
    """Dice, HD95 and volumes per structure, accumulated case by case, aggregated once (MONAI style)."""

    def __init__(self) -> None:
        self.dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
        self.hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        self.extra: list[dict[str, float]] = []

    def __call__(self, pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> None:
        if pred.shape != truth.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {truth.shape}")
        y_pred, y = one_hot(pred), one_hot(truth)
        with torch_threads(1), warnings.catch_warnings():  # many small ops; empty structures are handled below
            warnings.simplefilter("ignore")
            self.dice(y_pred=y_pred, y=y)
            self.hd95(y_pred=y_pred, y=y, spacing=[float(s) for s in spacing])
        voxel_ml = float(np.prod(spacing)) / 1000.0
        row = {"diagonal_mm": image_diagonal_mm(pred.shape, spacing)}
        for label, name in enumerate(STRUCTURES, start=1):
            row[f"vol_pred_{name}"] = float(np.count_nonzero(pred == label)) * voxel_ml
            row[f"vol_true_{name}"] = float(np.count_nonzero(truth == label)) * voxel_ml
        self.extra.append(row)

    def aggregate(self) -> pd.DataFrame:
        """One row per accumulated case: dice_*, dice_mean, hd95_*, hd95_missing_*, vol_pred_*, vol_true_*."""
        dice = self.dice.aggregate().cpu().numpy().reshape(-1, len(STRUCTURES))
        hd95 = self.hd95.aggregate().cpu().numpy().reshape(-1, len(STRUCTURES))
        frame = pd.DataFrame(self.extra)
        for j, name in enumerate(STRUCTURES):
            frame[f"dice_{name}"] = dice[:, j]
            pred_empty = frame[f"vol_pred_{name}"].to_numpy() == 0
            true_empty = frame[f"vol_true_{name}"].to_numpy() == 0
            values = np.where(pred_empty & true_empty, 0.0, hd95[:, j])
            missing = pred_empty ^ true_empty
            frame[f"hd95_{name}"] = np.where(missing, frame["diagonal_mm"], values)
            frame[f"hd95_missing_{name}"] = missing
        frame["dice_mean"] = frame[[f"dice_{s}" for s in STRUCTURES]].mean(axis=1)
        order = ([f"dice_{s}" for s in STRUCTURES] + ["dice_mean"] + [f"hd95_{s}" for s in STRUCTURES]
                 + [f"hd95_missing_{s}" for s in STRUCTURES] + [f"vol_pred_{s}" for s in STRUCTURES]
                 + [f"vol_true_{s}" for s in STRUCTURES])
        return frame[order]


def _read_truth(case: PreparedCase, label_map: dict[int, int] | None) -> np.ndarray:
    """The ground truth as stored on disk, in the internal labels: never the resampled training mask."""
    from data.validate import load_case

    if case.ref.mask_path is None:
        raise DataError(case.ref.image_path, f"case {case.case_id} has no ground-truth mask to evaluate against")
    _, mask = load_case(case.ref, label_map, require_mask=True, role="test")
    truth = np.asarray(mask.array, dtype=np.uint8)
    if truth.shape != tuple(case.geometry.original_shape):
        raise DataError(case.ref.mask_path, f"mask shape {truth.shape} differs from the image's "
                                            f"{tuple(case.geometry.original_shape)}")
    return truth


def clinical_indices(per_case: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, fraction, seed, patient) that has ED and ES: EF (%) of LV/RV and LV mass (g).

    `*_err` = prediction - truth, `*_abs_err` = its absolute value (EF errors in percentage points).
    """
    keys = [k for k in KEYS if k in per_case.columns]
    rows = []
    for key, group in per_case.groupby(keys, sort=True, dropna=False):
        phases = group.set_index("phase")
        if phases.index.duplicated().any():
            raise ValueError(f"clinical_indices: {dict(zip(keys, key))} has phases {list(phases.index)}; "
                             f"expected one row per phase")
        if not {"ED", "ES"} <= set(phases.index):
            continue
        ed, es = phases.loc["ED"], phases.loc["ES"]
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        for name in ("LV", "RV"):
            for what in ("pred", "true"):
                edv, esv = ed[f"vol_{what}_{name}"], es[f"vol_{what}_{name}"]
                row[f"ef_{name}_{what}"] = 100.0 * (edv - esv) / edv if edv > 0 else float("nan")
        for what in ("pred", "true"):
            row[f"mass_MYO_{what}"] = MYOCARDIAL_DENSITY_G_PER_ML * ed[f"vol_{what}_MYO"]
        for kind, name in (("ef", "LV"), ("ef", "RV"), ("mass", "MYO")):
            row[f"{kind}_{name}_err"] = row[f"{kind}_{name}_pred"] - row[f"{kind}_{name}_true"]
            row[f"{kind}_{name}_abs_err"] = abs(row[f"{kind}_{name}_err"])
        rows.append(row)
    return pd.DataFrame(rows, columns=keys + PATIENT_COLUMNS)


def patient_level(per_case: pd.DataFrame) -> pd.DataFrame:
    """The patient-level columns of `evaluate_cases`' output, one row per patient (they repeat per phase)."""
    keys = [k for k in ("arm", "generator", "augmentation", "fraction", "seed", "patient") if k in per_case.columns]
    return per_case[keys + PATIENT_COLUMNS].drop_duplicates(subset=keys).dropna(subset=PATIENT_COLUMNS, how="all")


def evaluate_cases(model: torch.nn.Module, cases: Sequence[PreparedCase], out_dir: Path | str | None, *,
                   arm: str, fraction: float, seed: int, save_predictions: bool = True, batch_size: int = 16,
                   label_map: dict[int, int] | None = None, autocast: bool = False, workers: int = 1) -> pd.DataFrame:
    """Per case and phase: Dice, HD95 (mm), volumes (ml); per patient: EF and mass (see module docstring).

    Ground truth is read from `case.ref.mask_path` (with `label_map`, as for training). With
    `save_predictions`, `<out_dir>/<case_id>_pred.nii.gz` is written on the original grid with the original
    affine, so it opens over the image in ITK-SNAP / 3D Slicer. `workers` > 1 scores chunks of cases in that
    many processes on the CPU (`data.parallel.process_map`, one thread each, the model copied to each): the same
    table, in the same order, as one process. A model on a GPU scores in this process.
    """
    if save_predictions and out_dir is None:
        raise ValueError("evaluate_cases: out_dir is required when save_predictions=True")
    if not cases:
        return pd.DataFrame(columns=KEYS + ["phase", "case"] + PATIENT_COLUMNS)
    score = functools.partial(_score_cases, model, out_dir=out_dir if save_predictions else None,
                              batch_size=batch_size, label_map=label_map, autocast=autocast)
    bar = tqdm(total=len(cases), desc=f"evaluate {arm} {fraction:g} s{seed}", leave=False, mininterval=2.0)
    try:
        if workers > 1 and len(cases) > 1 and _model_device(model).type == "cpu":  # never fork a CUDA context
            per_chunk = -(-len(cases) // (4 * workers))  # a few chunks per process: even loads, few model copies
            chunks = [list(cases[i:i + per_chunk]) for i in range(0, len(cases), per_chunk)]
            frames = process_map(score, chunks, workers, done=lambda frame: bar.update(len(frame)))
        else:
            frames = [score(cases, progress=bar)]
    finally:
        bar.close()
    per_case = pd.concat(frames, ignore_index=True)
    per_case.insert(0, "seed", int(seed))
    per_case.insert(0, "fraction", float(fraction))
    per_case.insert(0, "arm", arm)
    return per_case.merge(clinical_indices(per_case), on=KEYS, how="left")


def _score_cases(model: torch.nn.Module, cases: Sequence[PreparedCase], *, out_dir: Path | str | None,
                 batch_size: int, label_map: dict[int, int] | None, autocast: bool,
                 progress: tqdm | None = None) -> pd.DataFrame:
    """patient, phase, case and the structure metrics of each case (in a worker process, or in the caller's)."""
    metrics, rows = StructureMetrics(), []
    for case in cases:
        pred = predict_case(model, case, batch_size, autocast=autocast)
        metrics(pred, _read_truth(case, label_map), case.geometry.original_spacing)
        rows.append({"patient": case.patient_id, "phase": case.ref.phase, "case": case.case_id})
        if out_dir is not None:
            write_nifti(Path(out_dir) / f"{case.case_id}_pred.nii.gz", pred, case.geometry.affine, is_label=True)
        if progress is not None:
            progress.update()
    return pd.concat([pd.DataFrame(rows), metrics.aggregate()], axis=1)


# ---------------------------------------------------------------------------------------------- tables


def summarize(per_case: pd.DataFrame) -> pd.DataFrame:
    """Mean, sd, median and n per arm (x generator x augmentation) x fraction x metric x structure, in long format.

    Case-level metrics (Dice, HD95, absolute volume error) count every case and phase of every seed;
    patient-level ones (EF and mass errors) count each patient once per seed.
    """
    group = [c for c in ("arm", "generator", "augmentation", "fraction") if c in per_case.columns]
    case_metrics = [("dice", s, f"dice_{s}") for s in (*STRUCTURES, "mean")]
    case_metrics += [("hd95", s, f"hd95_{s}") for s in STRUCTURES]
    frame = per_case.copy()
    for s in STRUCTURES:
        frame[f"vol_abs_err_{s}"] = (frame[f"vol_pred_{s}"] - frame[f"vol_true_{s}"]).abs()
        case_metrics.append(("vol_abs_err_ml", s, f"vol_abs_err_{s}"))
    patient_metrics = [("ef_abs_err", "LV", "ef_LV_abs_err"), ("ef_abs_err", "RV", "ef_RV_abs_err"),
                       ("mass_abs_err_g", "MYO", "mass_MYO_abs_err")]
    rows = []
    for level, table, specs in (("case", frame, case_metrics), ("patient", patient_level(frame), patient_metrics)):
        for key, sub in table.groupby(group, sort=True, dropna=False):
            for metric, structure, column in specs:
                values = sub[column].astype(float).dropna()
                rows.append({**dict(zip(group, key if isinstance(key, tuple) else (key,))), "metric": metric,
                             "structure": structure, "level": level, "n": int(len(values)),
                             "mean": values.mean(), "sd": values.std(ddof=1), "median": values.median()})
    return pd.DataFrame(rows, columns=group + ["metric", "structure", "level", "n", "mean", "sd", "median"])


