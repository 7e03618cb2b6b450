"""Every bad input gives one clear DataError naming the file; a dataset report collects them all."""
from __future__ import annotations

import re
import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from data.types import CaseRef, DataError
from data.validate import DataWarning, ValidationReport, load_case, slice_axis, validate_dataset
from tests.data.test_layouts import SPACING, affine, heart_mask, save, write_acdc, write_acdc_patient


def make_case(tmp_path, image=None, mask=None, image_affine=None, mask_affine=None, suffix=".nii.gz") -> CaseRef:
    """One image + mask pair on disk; defaults are a valid case."""
    mask = heart_mask() if mask is None else mask
    image = (100 + 50 * heart_mask()).astype(np.float32) if image is None else image
    image_path = save(tmp_path / f"img{suffix}", image, image_affine)
    mask_path = save(tmp_path / f"img_gt{suffix}", mask, mask_affine) if mask is not False else None
    return CaseRef("p1", "ED", image_path, mask_path)


def test_valid_case_loads_as_float_image_and_uint8_mask(tmp_path):
    ref = make_case(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fully labelled valid case warns about nothing
        image, mask = load_case(ref)
    assert image.array.dtype == np.float32 and mask.array.dtype == np.uint8
    assert image.shape == mask.shape == (24, 24, 4)
    assert image.spacing == pytest.approx(SPACING) and mask.spacing == pytest.approx(SPACING)
    np.testing.assert_array_equal(mask.array, heart_mask())


def test_truncated_file(tmp_path):
    ref = make_case(tmp_path)
    data = ref.image_path.read_bytes()
    ref.image_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="unreadable or truncated") as info:
        load_case(ref)
    assert info.value.path == ref.image_path and str(ref.image_path) in str(info.value)


def test_shape_mismatch(tmp_path):
    ref = make_case(tmp_path, mask=heart_mask(shape=(24, 22, 4)))
    with pytest.raises(DataError, match=r"mask shape \(24, 22, 4\) differs from image shape \(24, 24, 4\)") as info:
        load_case(ref)
    assert str(ref.mask_path) in str(info.value)


def test_affine_mismatch_beyond_tolerance_only(tmp_path):
    shifted = affine()
    shifted[0, 3] = 5.0  # 5 mm off
    ref = make_case(tmp_path, mask_affine=shifted)
    with pytest.raises(DataError, match="mask affine differs") as info:
        load_case(ref)
    assert str(ref.mask_path) in str(info.value)

    almost = affine()
    almost[0, 3] = 1e-3  # rounding noise from another writer: accepted, mask takes the image's affine
    _, mask = load_case(make_case(tmp_path, mask_affine=almost))
    np.testing.assert_array_equal(mask.affine, affine())


def test_label_outside_the_map(tmp_path):
    mask = heart_mask()
    mask[0, 0, 0] = 7
    ref = make_case(tmp_path, mask=mask)
    with pytest.raises(DataError, match=r"label value\(s\) 7; allowed: \[0, 1, 2, 3\]") as info:
        load_case(ref)
    assert str(ref.mask_path) in str(info.value)
    with pytest.raises(DataError, match=r"label value\(s\) 3, 7; allowed: \[0, 1, 2\]"):
        load_case(ref, label_map={1: 1, 2: 2})


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nan_inf_intensities(tmp_path, bad_value):
    image = np.full((24, 24, 4), 100.0, np.float32)
    image[3, 4, 1] = bad_value
    ref = make_case(tmp_path, image=image)
    with pytest.raises(DataError, match="1 NaN/Inf intensities") as info:
        load_case(ref)
    assert info.value.path == ref.image_path


def test_4d_image_is_refused_but_trailing_singleton_is_squeezed(tmp_path):
    ref = make_case(tmp_path, image=np.zeros((24, 24, 4, 3), np.float32))
    with pytest.raises(DataError, match=r"4D array of shape \(24, 24, 4, 3\).*expected a 3D volume") as info:
        load_case(ref)
    assert str(ref.image_path) in str(info.value)

    ref = make_case(tmp_path, image=(1.0 + heart_mask()[..., None]).astype(np.float32), mask=heart_mask()[..., None])
    image, mask = load_case(ref)
    assert image.shape == mask.shape == (24, 24, 4)


def test_2d_image_is_refused(tmp_path):
    ref = make_case(tmp_path, image=np.zeros((24, 24), np.float32), mask=False)
    with pytest.raises(DataError, match="2D array.*expected a 3D volume"):
        load_case(ref, require_mask=False)


def test_missing_mask(tmp_path):
    ref = make_case(tmp_path, mask=False)
    with pytest.raises(DataError, match="no mask file found") as info:
        load_case(ref)
    assert info.value.path == ref.image_path
    image, mask = load_case(ref, require_mask=False)
    assert mask is None and image.shape == (24, 24, 4)


def test_empty_mask_is_an_error_for_training_and_a_warning_for_test(tmp_path):
    ref = make_case(tmp_path, mask=np.zeros((24, 24, 4), np.uint8))
    with pytest.raises(DataError, match="no foreground") as info:
        load_case(ref, role="train")
    assert info.value.path == ref.mask_path
    with pytest.warns(DataWarning, match="no foreground"):
        _, mask = load_case(ref, role="test")
    assert not mask.array.any()
    with pytest.raises(ValueError, match="role 'training'"):
        load_case(ref, role="training")


def test_empty_slices_warn_once_per_case(tmp_path):
    mask = heart_mask(shape=(24, 24, 6))
    mask[..., [0, 5]] = 0  # beyond base and apex
    ref = make_case(tmp_path, image=(1 + mask).astype(np.float32), mask=mask)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_case(ref)
    assert len(caught) == 1 and caught[0].category is DataWarning
    assert "2 of 6 slices without labels" in str(caught[0].message)
    assert str(ref.mask_path) in str(caught[0].message)


def test_voxel_size_comes_from_the_header_when_the_sform_lost_it(tmp_path):
    """ACDC's files carry a unit-scale sform and the true voxel size only in pixdim."""
    img = nib.Nifti1Image(np.ones((24, 24, 4), np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]))
    img.header.set_zooms((1.25, 1.25, 10.0))
    img.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
    img.set_qform(None, code=0)
    path = tmp_path / "acdc_like.nii.gz"
    nib.save(img, str(path))
    assert nib.load(str(path)).affine[0, 0] == -1.0  # what nibabel alone would say
    image, _ = load_case(CaseRef("p", "ED", path, None), require_mask=False)
    assert image.spacing == pytest.approx((1.25, 1.25, 10.0))
    assert image.affine[0, 0] == pytest.approx(-1.25)  # direction kept
    assert slice_axis(image) == 2


def test_uncompressed_nii(tmp_path):
    image, mask = load_case(make_case(tmp_path, suffix=".nii"))
    assert image.shape == mask.shape == (24, 24, 4)


# --- whole dataset -------------------------------------------------------------------------------

def broken_acdc(root):
    """Five patients: 1 and 5 valid, 2 truncated image, 3 bad Info.cfg, 4 label 9 in a mask."""
    write_acdc(root, n_patients=5)
    train = root / "training"
    image = train / "patient002" / "patient002_frame01.nii.gz"
    image.write_bytes(image.read_bytes()[:200])
    (train / "patient003" / "Info.cfg").write_text("ED: one\nES: 7\n")
    gt = train / "patient004" / "patient004_frame07_gt.nii.gz"
    mask = heart_mask(lv_radius=3.0)
    mask[1, 1, 1] = 9
    save(gt, mask)
    return root


def test_validate_dataset_collects_every_error(tmp_path):
    root = broken_acdc(tmp_path / "ACDC")
    report = validate_dataset(root)

    assert not report.ok and len(report.errors) == 3
    frame = report.frame
    status = dict(zip(frame["case"], frame["status"]))
    assert status["patient001_ED"] == status["patient005_ES"] == status["patient002_ES"] == "ok"
    assert status["patient002_ED"] == status["patient003"] == status["patient004_ES"] == "error"
    assert "patient002_frame01.nii.gz" in frame.set_index("case").loc["patient002_ED", "message"]
    assert "Info.cfg" in frame.set_index("case").loc["patient003", "message"]
    assert any("patient004_frame07_gt.nii.gz" in e and "9" in e for e in report.errors)

    ok = frame[frame["status"] == "ok"].set_index("case")
    assert ok.loc["patient001_ED", "shape"] == (24, 24, 4)
    assert ok.loc["patient001_ED", "spacing"] == SPACING
    assert ok.loc["patient001_ED", "labels"] == (0, 1, 2, 3)
    voxel_ml = np.prod(SPACING) / 1000
    expected_lv = (heart_mask(lv_radius=5.0) == 3).sum() * voxel_ml
    assert ok.loc["patient001_ED", "LV_ml"] == pytest.approx(expected_lv)
    assert ok.loc["patient001_ED", "LV_ml"] > ok.loc["patient001_ES", "LV_ml"]

    table = report.format_table()
    assert table.splitlines()[-1] == f"{len(frame)} cases, 3 errors, 0 warnings"
    assert all(error in table for error in report.errors)  # errors printed in full below the table


def test_validate_dataset_counts_warnings_and_writes_csv(tmp_path):
    root = write_acdc(tmp_path / "ACDC", n_patients=2)
    gt = root / "training" / "patient001" / "patient001_frame01_gt.nii.gz"
    mask = heart_mask(lv_radius=5.0)
    mask[..., 0] = 0
    save(gt, mask)
    report = validate_dataset(root / "training", layout="acdc")
    assert report.ok and len(report.warnings) == 1
    assert report.format_table().splitlines()[-1] == "4 cases, 0 errors, 1 warnings"
    assert report.frame.set_index("case").loc["patient001_ED", "message"].startswith("1 of 4 slices")

    csv = report.to_csv(tmp_path / "out" / "summary.csv")
    back = pd.read_csv(csv)
    assert list(back["case"]) == list(report.frame["case"])
    assert back.loc[0, "shape"] == "24x24x4" and back.loc[0, "labels"] == "0,1,2,3"
    assert [p.name for p in csv.parent.iterdir()] == ["summary.csv"]  # no temp file left behind


def test_validate_dataset_with_label_map(tmp_path):
    root = tmp_path / "mnms"
    write_acdc_patient(root, "patient001", mask_order=(3, 2, 1))
    plain = validate_dataset(root).frame.set_index("case")
    mapped = validate_dataset(root, label_map={1: 3, 2: 2, 3: 1}).frame.set_index("case")
    assert mapped.loc["patient001_ED", "LV_ml"] == pytest.approx(plain.loc["patient001_ED", "RV_ml"])
    assert mapped.loc["patient001_ED", "LV_ml"] > mapped.loc["patient001_ES", "LV_ml"]


def test_validate_dataset_of_an_unknown_folder_raises(tmp_path):
    with pytest.raises(DataError, match="no known dataset layout"):
        validate_dataset(tmp_path)
    empty = ValidationReport(pd.DataFrame(columns=["case"]))
    assert empty.ok and empty.format_table().splitlines()[-1] == "0 cases, 0 errors, 0 warnings"


def test_cli_exit_code(tmp_path, capsys):
    from pipeline.cli import main

    good = write_acdc(tmp_path / "good", n_patients=2)
    assert main(["validate-data", str(good), "--csv", str(tmp_path / "good.csv")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^4 cases, 0 errors, 0 warnings$", out, re.M) and (tmp_path / "good.csv").is_file()

    bad = broken_acdc(tmp_path / "bad")
    assert main(["validate-data", str(bad)]) != 0
    assert "3 errors" in capsys.readouterr().out
    assert main(["validate-data", str(tmp_path / "good"), "--label-map", "1:3,2:2,3:1"]) == 0
    assert main(["validate-data", str(tmp_path / "missing")]) != 0


def test_a_constant_image_warns_and_is_an_error_for_training(tmp_path):
    """Issue 17: an all-zero image used to pass validation and train silently."""
    ref = make_case(tmp_path, image=np.zeros((24, 24, 4), np.float32))
    with pytest.raises(DataError, match=r"no contrast inside the mask \(every labelled voxel is 0\)") as info:
        load_case(ref, role="train")
    assert info.value.path == ref.image_path
    with pytest.warns(DataWarning, match=r"image is constant \(0 everywhere\)"):
        load_case(ref, role="test")
    with pytest.warns(DataWarning, match="image is constant"):
        load_case(CaseRef("p1", "ED", ref.image_path, None), require_mask=False, role="test")


def test_an_image_without_contrast_in_the_heart_is_a_training_error(tmp_path):
    image = (100 + 50 * (heart_mask() > 0)).astype(np.float32)  # the torso varies, the heart is one value
    with pytest.raises(DataError, match="no contrast inside the mask"):
        load_case(make_case(tmp_path, image=image), role="train")


def test_folders_that_look_like_patients_but_do_not_fit_are_listed(tmp_path):
    root = write_acdc(tmp_path / "acdc", n_patients=2)
    (root / "training" / "Patient001 copy").mkdir()
    (root / "training" / "patient002_old").mkdir()
    (root / "training" / "notes").mkdir()  # not patient-like: not worth a word
    report = validate_dataset(root)
    assert report.skipped == [f"{root / 'training'}: skipped 2 folders that look like cases but are not named "
                              f"patientNNN: 'Patient001 copy', 'patient002_old'"]
    assert "warnings:\n  " + report.skipped[0] in report.format_table()
    assert report.ok and len(report.frame) == 4
