"""Export a synthetic dataset (optionally with real cases) as an nnU-Net v2 raw dataset.

    out_dir/DatasetXXX_NAME/
      dataset.json           channel_names {"0": "cineMRI"}, labels, numTraining, file_ending ".nii.gz"
      imagesTr/CASE_0000.nii.gz
      labelsTr/CASE.nii.gz

CASE is `<patient>_<phase>`: `synth_spade_0001_ED` for a synthetic volume (one phase each), `patient001_ED` for a
real one. NIfTI files are copied (or hard-linked) byte for byte; other formats, and real labels that need a
`label_map`, go through `data.validate.load_case` and are rewritten as NIfTI in the internal labels. The folder
is built beside its final place and renamed into it, so nnU-Net never sees half a dataset.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from data.io import inside, umask, write_text, writing
from data.types import LABELS, CaseRef

FILE_ENDING = ".nii.gz"
CHANNEL_NAMES = {"0": "cineMRI"}  # not "CT": nnU-Net then z-scores each image, as MR needs
NNUNET_LABELS = {name: value for value, name in LABELS.items()}  # {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class _Entry:
    case: str
    ref: CaseRef
    needs_rewrite: bool  # not NIfTI-gz, or labels to remap
    source: Path  # the file the case name was read from (manifest.csv, or the real image)


def export_nnunet(synth_dir: Path | str, out_dir: Path | str, dataset_id: int, name: str,
                  with_real: Path | str | None = None, *, label_map: dict[int, int] | None = None,
                  link: bool = False, overwrite: bool = False) -> Path:
    """Write `out_dir/DatasetXXX_NAME` from the synthetic folder `synth_dir` (+ the labelled cases of the real
    dataset `with_real`, any layout `data.layouts.list_cases` reads; `label_map` maps its file labels).

    `link` hard-links files instead of copying them (falls back to a copy across file systems). Returns the
    dataset folder. Raises ValueError for a bad id or name, a clash with another dataset of the same id, or an
    existing folder unless `overwrite`.
    """
    dataset_dir = dataset_folder(out_dir, dataset_id, name)
    if dataset_dir.exists() and not overwrite:
        raise ValueError(f"{dataset_dir}: already exists; pass overwrite=True (--overwrite) to replace it")

    entries = _synthetic_entries(Path(synth_dir))
    n_synthetic = len(entries)
    if with_real is not None:
        entries += _real_entries(Path(with_real), label_map)
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.case in seen:
            raise ValueError(f"case {entry.case} comes from both {seen[entry.case]} and {entry.ref.image_path}; "
                             f"expected distinct case names")
        seen[entry.case] = entry.ref.image_path
        _targets(entry, dataset_dir)  # every name checked before anything is written

    with writing(dataset_dir):  # a full disk or a read-only folder: one line, and no half dataset left
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dataset_dir.name}.", dir=out_dir))
        try:
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 would hide the dataset from the lab group
            (tmp / "imagesTr").mkdir()
            (tmp / "labelsTr").mkdir()
            for entry in entries:
                _write_entry(entry, tmp, label_map, link)
            _write_dataset_json(tmp, name, n_synthetic, len(entries) - n_synthetic)
            if dataset_dir.exists():
                shutil.rmtree(dataset_dir)
            os.replace(tmp, dataset_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return dataset_dir


def dataset_folder(out_dir: Path | str, dataset_id: int, name: str) -> Path:
    """`out_dir/DatasetXXX_NAME` after checking id and name the way nnU-Net needs them."""
    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id: expected an integer in 1..999, got {dataset_id!r}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name: expected letters, digits and underscores only, got {name!r}")
    out_dir = Path(out_dir)
    folder = out_dir / f"Dataset{dataset_id:03d}_{name}"
    if out_dir.is_dir():
        clash = [p.name for p in out_dir.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir() and p != folder]
        if clash:
            raise ValueError(f"dataset_id {dataset_id}: {out_dir} already has {clash[0]}; nnU-Net needs one name "
                             f"per id, so pick another id")
    return folder


def _synthetic_entries(synth_dir: Path) -> list[_Entry]:
    from synthesis.synthesize import MANIFEST, read_manifest

    manifest = read_manifest(synth_dir)  # refuses cases and paths that leave synth_dir
    return [_Entry(f"{row.case}_ED", CaseRef(patient_id=row.case, phase="ED", image_path=synth_dir / row.path,
                                             mask_path=synth_dir / row.mask_path), needs_rewrite=False,
                   source=synth_dir / MANIFEST) for row in manifest.itertuples()]


def _real_entries(root: Path, label_map: dict[int, int] | None) -> list[_Entry]:
    """Labelled cases of a real dataset; one case per file (a folder that lists a file twice keeps it once)."""
    from data.layouts import list_cases

    entries, files = [], set()
    for ref in list_cases(root, layout="auto"):
        if ref.mask_path is None or ref.image_path in files:
            continue
        files.add(ref.image_path)
        plain = all(str(p).endswith(FILE_ENDING) for p in (ref.image_path, ref.mask_path)) and label_map is None
        entries.append(_Entry(ref.case_id, ref, needs_rewrite=not plain, source=ref.image_path))
    if not entries:
        raise ValueError(f"with_real {root}: no case with a mask; expected a labelled dataset")
    return entries


def _targets(entry: _Entry, dataset_dir: Path) -> tuple[Path, Path]:
    """Where an entry's image and label go; a case name that would leave imagesTr/labelsTr is refused."""
    return tuple(inside(dataset_dir / folder, name, source=entry.source, what="case", flat=True)
                 for folder, name in (("imagesTr", f"{entry.case}_0000{FILE_ENDING}"),
                                      ("labelsTr", f"{entry.case}{FILE_ENDING}")))


def _write_entry(entry: _Entry, dataset_dir: Path, label_map: dict[int, int] | None, link: bool) -> None:
    image, label = _targets(entry, dataset_dir)
    if entry.needs_rewrite:
        from data.io import write_nifti
        from data.validate import load_case

        volume, mask = load_case(entry.ref, label_map, role="train")
        write_nifti(image, volume.array, volume.affine)
        write_nifti(label, mask.array, mask.affine, is_label=True)
    else:
        _transfer(entry.ref.image_path, image, link)
        _transfer(entry.ref.mask_path, label, link)


def _transfer(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    shutil.copyfile(src, dst)


def _write_dataset_json(dataset_dir: Path, name: str, n_synthetic: int, n_real: int) -> None:
    n_training = len(list((dataset_dir / "labelsTr").glob(f"*{FILE_ENDING}")))
    spec = {
        "name": name,
        "description": f"cmr-synth export: {n_synthetic} synthetic + {n_real} real cases",
        "channel_names": CHANNEL_NAMES,
        "labels": NNUNET_LABELS,
        "numTraining": n_training,
        "file_ending": FILE_ENDING,
    }
    write_text(dataset_dir / "dataset.json", json.dumps(spec, indent=2) + "\n")
