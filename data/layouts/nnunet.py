"""nnU-Net (v2) and Medical Segmentation Decathlon layout.

    Dataset027_ACDC/           <- root: the dataset folder (imagesTr + labelsTr are used) ...
      dataset.json             {"channel_names": {"0": "cineMRI"}, "labels": {...}, "file_ending": ".nii.gz"}
      imagesTr/CASE_0000.nii.gz
      labelsTr/CASE.nii.gz
      imagesTs/CASE_0000.nii.gz   <- ... or `Dataset027_ACDC/imagesTs` for its test set (labels from
      labelsTs/CASE.nii.gz           the sibling labelsTs when present), or any folder holding
                                     imagesTs (+ labelsTs) and no imagesTr.

Images are named CASE_0000 (nnU-Net v2, the default) or just CASE when dataset.json has MSD's
"modality" / "training" keys (Decathlon and nnU-Net v1). Only single-channel datasets are supported.
The case name gives patient and phase: `X_ED` / `X_ES` -> (X, ED/ES), `patientNNN_frameXX` ->
(patientNNN, frameXX), anything else -> (name, "3D").
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from data.io import NIFTI_SUFFIXES, SITK_SUFFIXES, has_suffix
from data.layouts.common import warn_skipped
from data.types import CaseRef, DataError

DEFAULT_FILE_ENDING = ".nii.gz"
SPLITS = {"imagesTr": "labelsTr", "imagesTs": "labelsTs"}
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_ED_ES = re.compile(r"^(?P<patient>.+)_(?P<phase>ED|ES)$", re.IGNORECASE)
_ACDC_FRAME = re.compile(r"^(?P<patient>patient\d+)_(?P<phase>frame\d+)$")


class NnunetLayout:
    name = "nnunet"
    description = ("nnunet: dataset.json with imagesTr/CASE_0000.nii.gz + labelsTr/CASE.nii.gz "
                   "(or imagesTs + labelsTs, or root = .../imagesTs)")

    def matches(self, root: Path) -> bool:
        return self._images_dir(root) is not None

    def list_cases(self, root: Path, on_error: Callable[[str, DataError], None] | None = None) -> list[CaseRef]:
        """Every case of the images folder, sorted by name. Folder-level problems (dataset.json,
        multi-channel) always raise; a file that breaks the naming scheme goes to `on_error(file name, error)`."""
        images_dir = self._images_dir(root)
        if images_dir is None:
            raise DataError(root, f"not an nnU-Net folder; expected {self.description}")
        dataset_dir = images_dir.parent
        spec = read_dataset_json(dataset_dir / "dataset.json")
        ending = spec["file_ending"]
        labels_dir = dataset_dir / SPLITS[images_dir.name]
        cases = []
        files = sorted(p for p in images_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        warn_skipped(images_dir, [p.name for p in files if not p.name.endswith(ending)
                                  and has_suffix(p, NIFTI_SUFFIXES + SITK_SUFFIXES)], "files", f"CASE_0000{ending}")
        for image in files:
            if not image.name.endswith(ending):
                continue  # (dot files are skipped above: macOS "._x.nii.gz" forks ship inside the Decathlon archives)
            try:
                case = _case_name(image, ending, spec["channel_suffix"])
            except DataError as exc:
                if on_error is None:
                    raise
                on_error(image.name, exc)
                continue
            patient, phase = split_case_name(case)
            label = labels_dir / f"{case}{ending}"
            cases.append(CaseRef(patient_id=patient, phase=phase, image_path=image,
                                 mask_path=label if label.is_file() else None,
                                 metadata={"case": case, "dataset": spec["name"], "split": images_dir.name}))
        return cases

    def _images_dir(self, root: Path) -> Path | None:
        if root.name in SPLITS and root.is_dir():
            return root
        for name in SPLITS:  # imagesTr first: a dataset folder means its training set
            if (root / name).is_dir():
                return root / name
        return None


def split_case_name(case: str) -> tuple[str, str]:
    """(patient, phase) from an nnU-Net case name; phases ED/ES are upper-cased."""
    if m := _ED_ES.match(case):
        return m["patient"], m["phase"].upper()
    if m := _ACDC_FRAME.match(case):
        return m["patient"], m["phase"]
    return case, "3D"


def read_dataset_json(path: Path) -> dict[str, Any]:
    """The few dataset.json fields the reader needs; a missing dataset.json means nnU-Net v2 defaults."""
    raw: dict[str, Any] = {}
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(path, f"unreadable dataset.json ({exc}); expected a JSON object") from exc
        if not isinstance(raw, dict):
            raise DataError(path, f"expected a JSON object, got {type(raw).__name__}")
    msd = "modality" in raw or "training" in raw  # Decathlon / nnU-Net v1: images named CASE, no _0000
    channels = raw.get("channel_names", raw.get("modality", {"0": "image"}))
    if not isinstance(channels, dict) or len(channels) != 1:
        raise DataError(path, f"{len(channels)} input channels {channels}; only single-channel datasets "
                              f"(one image per case, CASE_0000) are supported")
    ending = raw.get("file_ending", DEFAULT_FILE_ENDING)
    if not isinstance(ending, str) or ending.lower() not in NIFTI_SUFFIXES + SITK_SUFFIXES:
        raise DataError(path, f"file_ending {ending!r}; expected one of {NIFTI_SUFFIXES + SITK_SUFFIXES}")
    return {"file_ending": ending, "channel_suffix": not msd, "name": raw.get("name", path.parent.name)}


def _case_name(image: Path, ending: str, channel_suffix: bool) -> str:
    """Case name of an image file; raises for a missing or second channel suffix."""
    stem = image.name[: -len(ending)]
    if not channel_suffix:
        return stem
    m = _CHANNEL.match(stem)
    if m is None:
        raise DataError(image, f"image name without channel suffix; expected CASE_0000{ending}")
    if m["channel"] != "0000":
        raise DataError(image, f"input channel {m['channel']}; only single-channel datasets (CASE_0000) "
                               f"are supported")
    return m["case"]
