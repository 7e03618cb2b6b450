"""nnU-Net v2 export: exact file names, dataset.json, real cases alongside, validation."""
from __future__ import annotations

import filecmp
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data.io import write_nifti, write_text
from synthesis.export_nnunet import export_nnunet
from tests.synthesis.test_masks import heart_stack
from tests.synthesis.test_synthesize import RecordingGenerator, make_draws, synthesize

MMS_FROM_INTERNAL = np.array([0, 3, 2, 1], np.uint8)  # internal 1 RV, 3 LV -> M&Ms 3 RV, 1 LV


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(RecordingGenerator(), make_draws(3), out)
    return out


def write_real(root: Path, convert=None) -> Path:
    """A one-patient dataset in the ACDC layout (ED = frame 1, ES = frame 2)."""
    patient = root / "patient001"
    write_text(patient / "Info.cfg", "ED: 1\nES: 2\nGroup: NOR\n")
    for frame, scale in ((1, 1.0), (2, 0.9)):
        mask = heart_stack(scale).transpose(1, 2, 0)
        labels = convert[mask] if convert is not None else mask
        affine = np.diag([1.4, 1.4, 9.0, 1.0])
        write_nifti(patient / f"patient001_frame{frame:02d}.nii.gz", 100.0 * mask + 20.0, affine)
        write_nifti(patient / f"patient001_frame{frame:02d}_gt.nii.gz", labels, affine, is_label=True)
    return root


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_exact_names_and_dataset_json(synth_dir, tmp_path):
    dataset = export_nnunet(synth_dir, tmp_path, 7, "SynthTest")
    assert dataset == tmp_path / "Dataset007_SynthTest"
    cases = [f"synth_double_000{i}_ED" for i in (1, 2, 3)]
    assert files(dataset / "imagesTr") == [f"{c}_0000.nii.gz" for c in cases]
    assert files(dataset / "labelsTr") == [f"{c}.nii.gz" for c in cases]
    spec = json.loads((dataset / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "cineMRI"}
    assert spec["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
    assert spec["numTraining"] == len(files(dataset / "labelsTr")) == 3
    assert spec["file_ending"] == ".nii.gz"
    # byte-for-byte copies of the synthetic volumes
    assert filecmp.cmp(dataset / "imagesTr" / f"{cases[0]}_0000.nii.gz",
                       synth_dir / "synth_double_0001" / "synth_double_0001_frame01.nii.gz", shallow=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_the_data_stage_reads_the_export_back(synth_dir, tmp_path):
    from data.layouts import list_cases

    dataset = export_nnunet(synth_dir, tmp_path, 8, "ReadBack")
    refs = list_cases(dataset, layout="auto")
    assert [(r.patient_id, r.phase) for r in refs] == [(f"synth_double_000{i}", "ED") for i in (1, 2, 3)]
    assert all(r.mask_path is not None for r in refs)


def test_with_real_includes_both(synth_dir, tmp_path):
    real = write_real(tmp_path / "real")
    dataset = export_nnunet(synth_dir, tmp_path / "raw", 9, "Mixed", with_real=real)
    labels = files(dataset / "labelsTr")
    assert labels == ["patient001_ED.nii.gz", "patient001_ES.nii.gz",
                      *[f"synth_double_000{i}_ED.nii.gz" for i in (1, 2, 3)]]
    assert files(dataset / "imagesTr") == [name.replace(".nii.gz", "_0000.nii.gz") for name in labels]
    spec = json.loads((dataset / "dataset.json").read_text())
    assert spec["numTraining"] == 5
    assert filecmp.cmp(dataset / "labelsTr" / "patient001_ES.nii.gz",
                       real / "patient001" / "patient001_frame02_gt.nii.gz", shallow=False)


def test_real_labels_are_remapped_with_a_label_map(synth_dir, tmp_path):
    real = write_real(tmp_path / "mms", convert=MMS_FROM_INTERNAL)
    dataset = export_nnunet(synth_dir, tmp_path / "raw", 10, "Mms", with_real=real, label_map={1: 3, 2: 2, 3: 1})
    exported = np.asarray(nib.load(dataset / "labelsTr" / "patient001_ED.nii.gz").dataobj)
    assert (exported == heart_stack(1.0).transpose(1, 2, 0)).all()


def test_link_hard_links_instead_of_copying(synth_dir, tmp_path):
    dataset = export_nnunet(synth_dir, tmp_path, 11, "Linked", link=True)
    exported = dataset / "labelsTr" / "synth_double_0001_ED.nii.gz"
    source = synth_dir / "synth_double_0001" / "synth_double_0001_frame01_gt.nii.gz"
    assert exported.stat().st_ino == source.stat().st_ino


@pytest.mark.parametrize("dataset_id, name, match", [
    (0, "Ok", "dataset_id"), (1000, "Ok", "dataset_id"), (True, "Ok", "dataset_id"), ("7", "Ok", "dataset_id"),
    (7, "with-dash", "name"), (7, "", "name"), (7, "two words", "name"),
])
def test_bad_id_or_name_is_a_clear_error(synth_dir, tmp_path, dataset_id, name, match):
    with pytest.raises(ValueError, match=match):
        export_nnunet(synth_dir, tmp_path, dataset_id, name)


def test_existing_datasets_are_protected(synth_dir, tmp_path):
    dataset = export_nnunet(synth_dir, tmp_path, 12, "First")
    with pytest.raises(ValueError, match="already exists"):
        export_nnunet(synth_dir, tmp_path, 12, "First")
    with pytest.raises(ValueError, match="already has Dataset012_First"):
        export_nnunet(synth_dir, tmp_path, 12, "Second")
    (dataset / "labelsTr" / "stale.nii.gz").write_bytes(b"")
    export_nnunet(synth_dir, tmp_path, 12, "First", overwrite=True)
    assert "stale.nii.gz" not in files(dataset / "labelsTr")


def test_a_folder_without_manifest_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="manifest.csv"):
        export_nnunet(tmp_path, tmp_path / "raw", 13, "Empty")


def test_cli_export(synth_dir, tmp_path, capsys):
    from pipeline.cli import main

    real = write_real(tmp_path / "real")
    assert main(["export-nnunet", str(synth_dir), str(tmp_path / "raw"), "--dataset-id", "5", "--name", "Cli",
                 "--with-real", str(real)]) == 0
    assert "Dataset005_Cli" in capsys.readouterr().out
    assert json.loads((tmp_path / "raw" / "Dataset005_Cli" / "dataset.json").read_text())["numTraining"] == 5
    with pytest.raises(SystemExit, match="dataset_id"):
        main(["export-nnunet", str(synth_dir), str(tmp_path / "raw"), "--dataset-id", "0", "--name", "Cli"])


def tampered_copy(synth_dir: Path, tmp_path: Path, column: str, value: str, row: int = 1) -> Path:
    """A copy of the synthetic folder whose manifest.csv holds `value` in `column` of data row `row`."""
    import shutil

    import pandas as pd

    copy = tmp_path / "nested" / "deeper" / "synth"
    shutil.copytree(synth_dir, copy)
    manifest = pd.read_csv(copy / "manifest.csv", keep_default_na=False)
    manifest.loc[row, column] = value
    manifest.to_csv(copy / "manifest.csv", index=False)
    return copy


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("column, value", [
    ("case", "../../../ESCAPED"), ("case", "/tmp/cmr_synth_ESCAPED"), ("case", "sub/dir"), ("case", ".."),
    ("path", "../../outside.nii.gz"), ("mask_path", "/etc/hostname"),
])
def test_a_manifest_name_leaving_its_folder_is_refused_with_nothing_written(synth_dir, tmp_path, column, value):
    """Issue 17: a crafted manifest.csv must neither write nor read outside its folders."""
    from data.types import DataError

    synth = tampered_copy(synth_dir, tmp_path, column, value)
    before = tree(tmp_path)
    with pytest.raises(DataError) as info:
        export_nnunet(synth, tmp_path / "nested" / "raw", 14, "Escape")
    message = str(info.value)
    assert str(synth / "manifest.csv") in message and "line 3" in message and repr(value) in message
    assert "\n" not in message
    assert tree(tmp_path) == before  # not even the output folder
    assert not Path("/tmp/cmr_synth_ESCAPED_ED_0000.nii.gz").exists()
