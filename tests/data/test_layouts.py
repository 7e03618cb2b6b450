"""Finding cases on disk: ACDC and nnU-Net/Decathlon layouts, autodetection, label remapping."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data.labels import remap_labels, validate_label_map
from data.layouts import LAYOUTS, detect_layout, list_cases
from data.types import DataError

SPACING = (1.5, 1.5, 8.0)


def heart_mask(shape=(24, 24, 4), lv_radius=4.0, order=(1, 2, 3)) -> np.ndarray:
    """Tiny short-axis-like mask: LV disk, MYO ring, RV crescent, on every slice.

    `order` gives the file values of (RV, MYO, LV): ACDC (1, 2, 3), M&Ms (3, 2, 1).
    """
    rv, myo, lv = order
    x, y = np.mgrid[: shape[0], : shape[1]]
    r = np.hypot(x - shape[0] / 2, y - shape[1] / 2)
    r_rv = np.hypot(x - shape[0] / 2, y - shape[1] / 2 + lv_radius + 4)
    plane = np.zeros(shape[:2], np.uint8)
    plane[(r_rv < lv_radius + 1) & (r >= lv_radius + 2)] = rv
    plane[(r >= lv_radius) & (r < lv_radius + 2)] = myo
    plane[r < lv_radius] = lv
    return np.repeat(plane[:, :, None], shape[2], axis=2)


def affine(spacing=SPACING) -> np.ndarray:
    return np.diag([*spacing, 1.0])


def save(path: Path, array: np.ndarray, aff: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine() if aff is None else aff), str(path))
    return path


def write_acdc_patient(folder: Path, patient: str, *, ed: int = 1, es: int = 7, suffix: str = ".nii.gz",
                       extra_info: str = "", mask_order=(1, 2, 3)) -> Path:
    """One ACDC patient folder: Info.cfg and ED/ES frames with _gt masks (ES with a smaller LV)."""
    pdir = folder / patient
    pdir.mkdir(parents=True, exist_ok=True)
    (pdir / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 170.0\nNbFrame: 20\n"
                                   f"Weight: 70.0\n{extra_info}")
    rng = np.random.default_rng(len(patient) + ed)
    for frame, radius in ((ed, 5.0), (es, 3.0)):
        mask = heart_mask(lv_radius=radius, order=mask_order)
        image = (rng.normal(100, 10, mask.shape) + 50 * mask).astype(np.int16)
        save(pdir / f"{patient}_frame{frame:02d}{suffix}", image)
        save(pdir / f"{patient}_frame{frame:02d}_gt{suffix}", mask)
    return pdir


def write_acdc(root: Path, n_patients: int = 3, **kwargs) -> Path:
    """A dataset folder `root/training/patientNNN/...` (like the ACDC download); returns root."""
    for i in range(1, n_patients + 1):
        write_acdc_patient(root / "training", f"patient{i:03d}", **kwargs)
    return root


def write_nnunet(root: Path, cases: dict[str, tuple[int, int, int]], *, split: str = "Tr",
                 dataset_json: dict | None = None) -> Path:
    """An nnU-Net v2 folder; `cases` maps case name -> mask label order (RV, MYO, LV)."""
    spec = {"channel_names": {"0": "cineMRI"}, "labels": {"background": 0, "RV": 1, "MYO": 2, "LV": 3},
            "numTraining": len(cases), "file_ending": ".nii.gz", "name": "tiny"}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(dataset_json if dataset_json is not None else spec))
    for case, order in cases.items():
        mask = heart_mask(order=order)
        save(root / f"images{split}" / f"{case}_0000.nii.gz", (100 + 50 * mask).astype(np.float32))
        save(root / f"labels{split}" / f"{case}.nii.gz", mask)
    return root


# --- ACDC ----------------------------------------------------------------------------------------

def test_acdc_dataset_folder_and_subfolder_list_the_same_sorted_cases(tmp_path):
    root = write_acdc(tmp_path / "ACDC", n_patients=3)
    write_acdc_patient(root / "training", "patient004", ed=2, es=11, extra_info="Source: test-site\n")
    from_root = list_cases(root)
    from_sub = list_cases(root / "training", layout="acdc")

    assert from_root == from_sub
    assert [c.case_id for c in from_root] == [f"patient{i:03d}_{p}" for i in range(1, 5) for p in ("ED", "ES")]
    last_ed, last_es = from_root[-2:]
    assert last_ed.image_path.name == "patient004_frame02.nii.gz"
    assert last_es.mask_path.name == "patient004_frame11_gt.nii.gz"
    assert last_ed.metadata == {"frame": 2, "group": "NOR", "height": 170.0, "weight": 70.0, "nb_frames": 20,
                                "source": "test-site"}
    assert from_root[0].metadata["source"] is None
    assert detect_layout(root) == detect_layout(root / "training") == "acdc"


def test_acdc_reads_uncompressed_nii(tmp_path):
    write_acdc_patient(tmp_path, "patient001", suffix=".nii")
    cases = list_cases(tmp_path)
    assert [c.image_path.name for c in cases] == ["patient001_frame01.nii", "patient001_frame07.nii"]
    assert all(c.mask_path.name.endswith("_gt.nii") for c in cases)


def test_acdc_testing_folder_has_the_same_layout(tmp_path):
    write_acdc_patient(tmp_path / "ACDC" / "testing", "patient101")
    assert [c.case_id for c in list_cases(tmp_path / "ACDC" / "testing")] == ["patient101_ED", "patient101_ES"]


def test_list_cases_reads_no_image(tmp_path):
    """Listing must stay fast on large datasets: image files are never opened."""
    pdir = write_acdc_patient(tmp_path, "patient001")
    for f in pdir.glob("*.nii.gz"):
        f.write_bytes(b"not a nifti")
    assert len(list_cases(tmp_path)) == 2


@pytest.mark.parametrize("damage, culprit, expected", [
    (lambda p: (p / "Info.cfg").unlink(), "Info.cfg", "Info.cfg not found"),
    (lambda p: (p / "Info.cfg").write_text("ED: 1\nES: twelve\n"), "Info.cfg", "ES to be a int"),
    (lambda p: (p / "Info.cfg").write_text("ED: 1\nGroup: NOR\n"), "Info.cfg", "'ES: <frame number>'"),
    (lambda p: (p / "Info.cfg").write_text("ED 1\nES: 7\n"), "Info.cfg", "expected 'Key: value'"),
    (lambda p: (p / "patient001_frame07.nii.gz").unlink(), "patient001_frame07.nii.gz", "ES frame file not found"),
])
def test_acdc_bad_patient_folder_names_the_file(tmp_path, damage, culprit, expected):
    damage(write_acdc_patient(tmp_path, "patient001"))
    with pytest.raises(DataError, match=expected) as info:
        list_cases(tmp_path)
    assert info.value.path.name == culprit and culprit in str(info.value)


def test_acdc_missing_gt_gives_no_mask(tmp_path):
    pdir = write_acdc_patient(tmp_path, "patient001")
    (pdir / "patient001_frame01_gt.nii.gz").unlink()
    ed, es = list_cases(tmp_path)
    assert ed.mask_path is None and es.mask_path is not None


def test_acdc_phantom_is_found_and_loads(phantom_root):
    from data.validate import load_case

    cases = list_cases(phantom_root)
    assert detect_layout(phantom_root) == "acdc"
    assert len(cases) == 12 and {c.phase for c in cases} == {"ED", "ES"}
    image, mask = load_case(cases[0])
    assert image.shape == mask.shape and set(np.unique(mask.array)) <= {0, 1, 2, 3}


# --- nnU-Net / Decathlon -------------------------------------------------------------------------

def test_nnunet_case_names_give_patient_and_phase(tmp_path):
    root = write_nnunet(tmp_path / "Dataset001_Tiny",
                        {"mnm_A1_ED": (1, 2, 3), "mnm_A1_ES": (1, 2, 3), "patient001_frame01": (1, 2, 3),
                         "case7": (1, 2, 3)})
    cases = list_cases(root)
    assert detect_layout(root) == "nnunet"
    assert [(c.patient_id, c.phase) for c in cases] == [
        ("case7", "3D"), ("mnm_A1", "ED"), ("mnm_A1", "ES"), ("patient001", "frame01")]
    assert cases[1].image_path == root / "imagesTr" / "mnm_A1_ED_0000.nii.gz"
    assert cases[1].mask_path == root / "labelsTr" / "mnm_A1_ED.nii.gz"
    assert cases[1].metadata["dataset"] == "tiny"


def test_nnunet_test_split_from_imagesTs_root_or_test_only_folder(tmp_path):
    root = write_nnunet(tmp_path / "Dataset001_Tiny", {"a_ED": (1, 2, 3)})
    write_nnunet(root, {"b_ED": (1, 2, 3), "b_ES": (1, 2, 3)}, split="Ts")
    (root / "labelsTs" / "b_ES.nii.gz").unlink()

    assert [c.case_id for c in list_cases(root)] == ["a_ED"]  # dataset folder: training set
    test_cases = list_cases(root / "imagesTs")
    assert [c.case_id for c in test_cases] == ["b_ED", "b_ES"]
    assert test_cases[0].mask_path == root / "labelsTs" / "b_ED.nii.gz" and test_cases[1].mask_path is None

    only_test = write_nnunet(tmp_path / "only_test", {"c_ES": (1, 2, 3)}, split="Ts")
    assert [c.case_id for c in list_cases(only_test, layout="nnunet")] == ["c_ES"]


def test_nnunet_multichannel_is_refused(tmp_path):
    spec = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0}, "file_ending": ".nii.gz"}
    root = write_nnunet(tmp_path / "mc", {"a": (1, 2, 3)}, dataset_json=spec)
    with pytest.raises(DataError, match="2 input channels.*single-channel") as info:
        list_cases(root)
    assert info.value.path.name == "dataset.json"

    root = write_nnunet(tmp_path / "mc_files", {"a": (1, 2, 3)})
    save(root / "imagesTr" / "a_0001.nii.gz", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(DataError, match="input channel 0001") as info:
        list_cases(root)
    assert info.value.path.name == "a_0001.nii.gz"


def test_decathlon_naming_without_channel_suffix(tmp_path):
    spec = {"name": "Heart", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "left atrium"},
            "training": [{"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"}]}
    root = tmp_path / "Task02_Heart"
    (root).mkdir()
    (root / "dataset.json").write_text(json.dumps(spec))
    save(root / "imagesTr" / "la_003.nii.gz", np.zeros((8, 8, 4), np.float32))
    save(root / "labelsTr" / "la_003.nii.gz", np.zeros((8, 8, 4), np.uint8))
    (root / "imagesTr" / "._la_003.nii.gz").write_bytes(b"macOS fork")  # shipped in the MSD archives
    [case] = list_cases(root)
    assert (case.patient_id, case.phase, case.mask_path.name) == ("la_003", "3D", "la_003.nii.gz")


def test_detect_layout_lists_what_was_looked_for(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(DataError) as info:
        detect_layout(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert all(layout.description in message for layout in LAYOUTS.values())
    with pytest.raises(DataError, match="not found"):
        list_cases(tmp_path / "missing")
    with pytest.raises(ValueError, match="layout 'bids'"):
        list_cases(tmp_path, layout="bids")
    with pytest.raises(DataError, match="not an ACDC folder"):
        list_cases(write_nnunet(tmp_path / "n", {"a": (1, 2, 3)}), layout="acdc")


# --- labels --------------------------------------------------------------------------------------

MNMS = {1: 3, 2: 2, 3: 1}  # M&Ms files: 1 LV, 2 MYO, 3 RV


def test_remap_labels_mnms_order():
    file_mask = np.array([0, 1, 2, 3, 1], dtype=np.int16)
    out = remap_labels(file_mask, MNMS)
    assert out.dtype == np.uint8 and out.tolist() == [0, 3, 2, 1, 3]
    assert remap_labels(file_mask.astype(np.float32), None).tolist() == [0, 1, 2, 3, 1]
    assert remap_labels(np.array([0, 4, 4]), {4: 3}).tolist() == [0, 3, 3]  # 0 stays background unmapped


@pytest.mark.parametrize("mask, label_map, bad", [
    (np.array([0, 1, 4]), None, "4"),
    (np.array([0, 1, 5]), MNMS, "5"),
    (np.array([0.0, 1.5]), None, "1.5"),
    (np.array([0, -1]), None, "-1"),
])
def test_remap_labels_rejects_unexpected_values(mask, label_map, bad):
    with pytest.raises(DataError, match=rf"label value\(s\) {bad}; allowed: \[0, 1, 2, 3\]") as info:
        remap_labels(mask, label_map, path="some/mask.nii.gz")
    assert "some/mask.nii.gz" in str(info.value)


@pytest.mark.parametrize("label_map, key", [({1: 4}, "label_map\\[1\\]"), ({-1: 1}, "key -1"),
                                            ({"1": 1}, "key '1'"), ([1, 2], "expected a dict")])
def test_validate_label_map_names_the_key(label_map, key):
    with pytest.raises(ValueError, match=key):
        validate_label_map(label_map)
    assert validate_label_map({np.int64(1): np.int64(3)}) == {1: 3}


def test_mnms_label_order_end_to_end(tmp_path):
    """An nnU-Net folder with M&Ms label order reads back in the internal order with the map."""
    from data.validate import load_case

    ref_root = write_nnunet(tmp_path / "acdc_order", {"p_ED": (1, 2, 3)})
    mnms_root = write_nnunet(tmp_path / "mnms_order", {"p_ED": (3, 2, 1)})
    [ref_case], [mnms_case] = list_cases(ref_root), list_cases(mnms_root)
    _, expected = load_case(ref_case)
    _, unmapped = load_case(mnms_case)
    _, mapped = load_case(mnms_case, MNMS)

    np.testing.assert_array_equal(mapped.array, expected.array)
    assert not np.array_equal(unmapped.array, expected.array)
    lv = expected.array == 3
    assert (nib.load(str(mnms_case.mask_path)).get_fdata()[lv] == 1).all()


def test_skipped_entries_that_look_like_cases_are_warned_about(tmp_path):
    from data.types import DataWarning

    root = write_acdc(tmp_path / "acdc", n_patients=1)
    (root / "training" / "Patient004 copy").mkdir()
    with pytest.warns(DataWarning, match=r"skipped 1 folders .* named patientNNN: 'Patient004 copy'"):
        assert len(list_cases(root)) == 2
    nnunet = write_nnunet(tmp_path / "nn", {"a_ED": (1, 2, 3)})
    save(nnunet / "imagesTr" / "b_ED_0000.nii", np.ones((4, 4, 4), np.float32))  # not the dataset's .nii.gz
    (nnunet / "imagesTr" / "README.txt").write_text("not an image: no word about it")
    with pytest.warns(DataWarning, match=r"skipped 1 files .* named CASE_0000.nii.gz: 'b_ED_0000.nii'$"):
        assert [c.case_id for c in list_cases(nnunet)] == ["a_ED"]
