"""3D evaluation: metrics against hand-computed values, empty structures, clinical indices, original grid."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from data.config import PreprocessConfig
from data.io import write_csv
from data.preprocess import preprocess_case
from segmentation.evaluate import (PATIENT_COLUMNS, StructureMetrics, clinical_indices, evaluate_cases,
                                   image_diagonal_mm, patient_level, predict_case, summarize)
from tests.segmentation.cases import OracleNet, heart_volume, write_case

RV, MYO, LV = 1, 2, 3


def _metrics(pred, truth, spacing):
    m = StructureMetrics()
    m(pred, truth, spacing)
    return m.aggregate().iloc[0]


def _brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Symmetric HD95 from all pairwise distances between the boundary voxels (MONAI's definition)."""
    def surface(m):
        return np.argwhere(m ^ ndimage.binary_erosion(m)) * np.asarray(spacing)
    sa, sb = surface(a), surface(b)
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_single_voxels_give_the_distance_in_mm():
    truth, pred = np.zeros((8, 8, 8), np.uint8), np.zeros((8, 8, 8), np.uint8)
    truth[2, 2, 2], pred[2, 2, 5] = LV, LV  # 3 slices apart at 3 mm
    row = _metrics(pred, truth, (1.0, 1.0, 3.0))
    assert row["dice_LV"] == 0.0
    assert row["hd95_LV"] == pytest.approx(9.0)
    assert row["vol_pred_LV"] == pytest.approx(0.003) and row["vol_true_LV"] == pytest.approx(0.003)


def test_shifted_cubes_match_hand_computed_dice_and_hd95():
    truth, pred = np.zeros((14, 12, 12), np.uint8), np.zeros((14, 12, 12), np.uint8)
    truth[2:6, 2:6, 2:6] = MYO
    pred[4:8, 2:6, 2:6] = MYO  # shifted by 2 voxels along an axis of 1.5 mm: overlap 2 x 4 x 4
    spacing = (1.5, 1.0, 1.0)
    row = _metrics(pred, truth, spacing)
    assert row["dice_MYO"] == pytest.approx(2 * 32 / (64 + 64))
    assert row["hd95_MYO"] == pytest.approx(_brute_force_hd95(pred == MYO, truth == MYO, spacing), rel=1e-5)
    assert row["hd95_MYO"] == pytest.approx(3.0)  # every boundary voxel is at most 2 x 1.5 mm away
    assert row["vol_true_MYO"] == pytest.approx(64 * 1.5 / 1000)


def test_empty_structures_follow_the_documented_convention():
    shape, spacing = (10, 12, 4), (1.5, 1.5, 10.0)
    truth, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    truth[2:5, 2:5, 1] = LV  # LV only in truth (missed), MYO only in pred (false positive), RV in neither
    pred[6:8, 6:8, 2] = MYO
    row = _metrics(pred, truth, spacing)
    diagonal = math.sqrt((10 * 1.5) ** 2 + (12 * 1.5) ** 2 + (4 * 10.0) ** 2)
    assert image_diagonal_mm(shape, spacing) == pytest.approx(diagonal)
    assert (row["dice_RV"], row["hd95_RV"], row["hd95_missing_RV"]) == (1.0, 0.0, False)
    assert (row["dice_LV"], row["dice_MYO"]) == (0.0, 0.0)
    assert row["hd95_LV"] == pytest.approx(diagonal) and row["hd95_MYO"] == pytest.approx(diagonal)
    assert row["hd95_missing_LV"] and row["hd95_missing_MYO"]
    assert row["dice_mean"] == pytest.approx(1 / 3)


def test_metrics_accumulate_one_row_per_case():
    m = StructureMetrics()
    a = np.zeros((6, 6, 3), np.uint8)
    a[1:4, 1:4, :] = RV
    m(a, a, (1.0, 1.0, 1.0))
    m(np.zeros_like(a), a, (1.0, 1.0, 1.0))
    frame = m.aggregate()
    assert list(frame["dice_RV"]) == [1.0, 0.0] and list(frame["hd95_RV"])[0] == 0.0


def test_ejection_fraction_and_mass_from_hand_made_volumes():
    spacing = (1.25, 1.25, 10.0)  # 15.625 mm^3 per voxel: 6400 voxels = 100 ml
    voxels = {"ED_LV": 6400, "ES_LV": 2560, "ED_RV": 8000, "ES_RV": 4000, "ED_MYO": 6400}
    m = StructureMetrics()
    for phase in ("ED", "ES"):
        truth = np.zeros((100, 100, 10), np.uint8).reshape(-1)
        n_lv, n_rv = voxels[f"{phase}_LV"], voxels[f"{phase}_RV"]
        n_myo = voxels["ED_MYO"] if phase == "ED" else 5000
        truth[:n_lv] = LV
        truth[n_lv:n_lv + n_rv] = RV
        truth[n_lv + n_rv:n_lv + n_rv + n_myo] = MYO
        truth = truth.reshape(100, 100, 10)
        pred = truth.copy()
        if phase == "ES":
            pred[pred == LV] = 0
            pred.reshape(-1)[-3200:] = LV  # predicted ESV 50 ml instead of 40 (in unlabelled voxels)
        m(pred, truth, spacing)
    per_case = pd.concat([pd.DataFrame({"arm": "real", "fraction": 1.0, "seed": 0, "patient": "p1",
                                        "phase": ["ED", "ES"]}), m.aggregate()], axis=1)
    row = clinical_indices(per_case).iloc[0]
    assert row["ef_LV_true"] == pytest.approx(60.0)  # (100 - 40) / 100
    assert row["ef_LV_pred"] == pytest.approx(50.0)
    assert row["ef_LV_abs_err"] == pytest.approx(10.0) and row["ef_LV_err"] == pytest.approx(-10.0)
    assert row["ef_RV_true"] == pytest.approx(50.0) and row["ef_RV_abs_err"] == pytest.approx(0.0)
    assert row["mass_MYO_true"] == pytest.approx(105.0)  # 100 ml x 1.05 g/ml
    assert row["mass_MYO_abs_err"] == pytest.approx(0.0)


def test_patients_without_both_phases_get_no_clinical_indices():
    frame = pd.DataFrame({"arm": "real", "fraction": 1.0, "seed": 0, "patient": ["p1"], "phase": ["ED"],
                          **{f"vol_{w}_{s}": [1.0] for w in ("pred", "true") for s in ("RV", "MYO", "LV")}})
    assert clinical_indices(frame).empty


@pytest.fixture(scope="module")
def oblique_cases(tmp_path_factory):
    """Two patients x (ED, ES) as files, with flipped/permuted axes and a slice axis that is not the last."""
    folder = tmp_path_factory.mktemp("oblique")
    affine = np.array([[0.0, 0.0, -1.5, 40.0], [-1.5, 0.0, 0.0, 20.0], [0.0, 8.0, 0.0, -30.0], [0, 0, 0, 1]])
    refs = []
    for p in range(2):
        for phase, radius in (("ED", 4.5), ("ES", 3.5)):
            image, mask = heart_volume((30, 34, 4), seed=p, lv_radius=radius, label_image=True)
            # voxel order (X, S, Y): the slice axis (8 mm) is the middle one
            refs.append(write_case(folder, f"pat{p}_{phase}", image.transpose(0, 2, 1), mask.transpose(0, 2, 1),
                                   affine))
    return refs


@pytest.mark.parametrize("spacing", [1.5, 1.2])
def test_predictions_land_exactly_on_the_original_grid(oblique_cases, spacing):
    cfg = PreprocessConfig(target_spacing=spacing, crop_size=48, clip_percentiles=[0.0, 100.0])
    case = preprocess_case(oblique_cases[0], cfg)
    labels = predict_case(OracleNet(), case, batch_size=3)
    truth = np.asarray(nib.load(str(oblique_cases[0].mask_path)).dataobj)
    assert labels.shape == truth.shape == (30, 4, 34) and labels.dtype == np.uint8
    if spacing == 1.5:  # same in-plane spacing: the round trip is exact
        assert np.array_equal(labels, truth)
    else:  # resampled to 1.2 mm and back: the oracle's labels still overlap almost perfectly
        assert np.mean(labels == truth) > 0.97


def test_evaluate_cases_writes_rows_predictions_and_patient_indices(oblique_cases, tmp_path):
    cfg = PreprocessConfig(target_spacing=1.5, crop_size=48, clip_percentiles=[0.0, 100.0])
    cases = [preprocess_case(ref, cfg) for ref in oblique_cases]
    per_case = evaluate_cases(OracleNet(), cases, tmp_path, arm="real", fraction=0.5, seed=2)
    assert len(per_case) == 4 and set(per_case["phase"]) == {"ED", "ES"}
    assert (per_case[["dice_RV", "dice_MYO", "dice_LV"]] == 1.0).all().all()
    assert (per_case[["hd95_RV", "hd95_MYO", "hd95_LV"]] == 0.0).all().all()
    assert (per_case["arm"] == "real").all() and (per_case["fraction"] == 0.5).all() and (per_case["seed"] == 2).all()
    assert (per_case["ef_LV_abs_err"] == 0.0).all() and per_case["ef_LV_true"].between(20, 80).all()
    for ref in oblique_cases:
        written = nib.load(str(tmp_path / f"{ref.case_id}_pred.nii.gz"))
        original = nib.load(str(ref.image_path))
        assert written.shape == original.shape and np.allclose(written.affine, original.affine)
        assert written.get_data_dtype() == np.uint8
        assert np.array_equal(np.asarray(written.dataobj), np.asarray(nib.load(str(ref.mask_path)).dataobj))
    assert len(patient_level(per_case)) == 2


def test_summary_statistics_per_arm_fraction_and_structure(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for arm in ("real", "real+synthetic"):
        for patient in ("p1", "p2", "p3"):
            for phase in ("ED", "ES"):
                row = {"arm": arm, "fraction": 1.0, "seed": 0, "patient": patient, "phase": phase}
                for s in ("RV", "MYO", "LV"):
                    row |= {f"dice_{s}": rng.random(), f"hd95_{s}": 10 * rng.random(),
                            f"vol_pred_{s}": 100 * rng.random(), f"vol_true_{s}": 100 * rng.random()}
                rows.append(row)
    per_case = pd.DataFrame(rows)
    per_case["dice_mean"] = per_case[["dice_RV", "dice_MYO", "dice_LV"]].mean(axis=1)
    per_case = per_case.merge(clinical_indices(per_case), on=["arm", "fraction", "seed", "patient"], how="left")
    assert set(PATIENT_COLUMNS) <= set(per_case.columns)
    summary = summarize(per_case)
    dice_lv = summary.query("arm == 'real' and metric == 'dice' and structure == 'LV'").iloc[0]
    expected = per_case.query("arm == 'real'")["dice_LV"]
    assert dice_lv["n"] == 6 and dice_lv["mean"] == pytest.approx(expected.mean())
    assert dice_lv["sd"] == pytest.approx(expected.std()) and dice_lv["median"] == pytest.approx(expected.median())
    ef = summary.query("arm == 'real' and metric == 'ef_abs_err' and structure == 'LV'").iloc[0]
    assert ef["n"] == 3 and ef["level"] == "patient"  # each patient once, not once per phase
    path = write_csv(summary, tmp_path / "summary.csv")
    pd.testing.assert_frame_equal(pd.read_csv(path), summary, check_dtype=False)
