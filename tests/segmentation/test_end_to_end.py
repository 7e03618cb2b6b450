"""The stage on files from the data stage: phantom (always) and ACDC (where present), through data.cache."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from data.cache import prepare_cases
from data.config import PreprocessConfig
from data.io import read_volume
from data.layouts import list_cases
from data.preprocess import preprocess_case
from segmentation.evaluate import evaluate_cases, predict_case, summarize
from segmentation.model import build_model, load_model
from segmentation.train import train_segmenter
from tests.segmentation.cases import tiny_config

PREPROCESS = PreprocessConfig(target_spacing=3.0, crop_size=64)  # coarse: keeps the phantom test fast


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_phantom_train_evaluate_round_trip(phantom_root, tmp_path):
    refs = list_cases(phantom_root)
    patients = sorted({r.patient_id for r in refs})
    by = {p: [r for r in refs if r.patient_id == p] for p in patients}
    train = prepare_cases([r for p in patients[:4] for r in by[p]], PREPROCESS, tmp_path / "cache")
    val = prepare_cases(by[patients[4]], PREPROCESS, tmp_path / "cache", role="val")
    test = prepare_cases(by[patients[5]], PREPROCESS, tmp_path / "cache", role="test")

    cfg = tiny_config(steps=8, val_every=4, batch_size=4)
    result = train_segmenter("real", train, val, cfg, tmp_path / "model", seed=0, preprocess=PREPROCESS,
                             progress=False)
    model, ckpt = load_model(result.best_checkpoint)
    assert ckpt["preprocess"]["crop_size"] == 64

    per_case = evaluate_cases(model, test, tmp_path / "pred", arm="real", fraction=1.0, seed=0)
    assert list(per_case["phase"]) == ["ED", "ES"] and per_case["patient"].nunique() == 1
    assert per_case[["dice_RV", "dice_MYO", "dice_LV"]].apply(lambda c: c.between(0, 1)).all().all()
    assert np.isfinite(per_case[["hd95_RV", "hd95_MYO", "hd95_LV"]].to_numpy()).all()
    assert per_case["ef_LV_true"].notna().all() and (per_case["vol_true_LV"] > 0).all()
    for ref in by[patients[5]]:
        written = nib.load(str(tmp_path / "pred" / f"{ref.case_id}_pred.nii.gz"))
        image = nib.load(str(ref.image_path))
        assert written.shape == image.shape and np.allclose(written.affine, image.affine)
    summary = summarize(per_case)
    assert set(summary["metric"]) >= {"dice", "hd95", "ef_abs_err", "mass_abs_err_g"}
    assert isinstance(summary, pd.DataFrame) and (summary["n"] > 0).all()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_acdc_prediction_lands_on_the_original_grid(acdc_root):
    ref = list_cases(acdc_root)[0]
    case = preprocess_case(ref, PreprocessConfig(target_spacing=1.5, crop_size=128))
    torch.manual_seed(0)
    labels = predict_case(build_model(tiny_config()), case, batch_size=8)
    image = read_volume(ref.image_path)  # ACDC's true voxel size is in pixdim only; data.io reads it from there
    assert labels.shape == image.shape and labels.dtype == np.uint8
    assert np.allclose(case.geometry.affine, image.affine)
