"""Console commands of the segmentation stage: `cmr-synth segment`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

PRED_SUFFIX = "_pred.nii.gz"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "segment", help="segment short-axis NIfTI images with a trained checkpoint",
        description="Prepare each image exactly like the checkpoint's training data (its stored preprocessing "
                    "config), predict slice by slice and write <name>_pred.nii.gz on the image's own voxel "
                    "grid and affine (labels 0 bg, 1 RV, 2 MYO, 3 LV), ready to overlay in ITK-SNAP/3D Slicer.")
    p.add_argument("--checkpoint", type=Path, required=True, help="best.pt / last.pt of a training run")
    p.add_argument("--input", type=Path, required=True,
                   help="a 3D NIfTI file, or a folder: every *.nii / *.nii.gz in it except masks (*_gt) and "
                        "earlier predictions (*_pred); 4D files are skipped")
    p.add_argument("--output", type=Path, required=True, help="folder for the <name>_pred.nii.gz files")
    p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_segment)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_inputs(path: Path) -> list[Path]:
    """The images to segment under `path` (a file or a folder, not recursive)."""
    from data.io import NIFTI_SUFFIXES, has_suffix
    from data.types import DataError

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(path, "input not found; expected a NIfTI file or a folder of them")
    files = sorted(f for f in path.iterdir() if f.is_file() and has_suffix(f, NIFTI_SUFFIXES)
                   and not _stem(f).endswith(("_gt", "_pred")))
    if not files:
        raise DataError(path, "no NIfTI images (*.nii, *.nii.gz) found in this folder")
    return files


def _is_series(path: Path) -> bool:
    """A 4D (cine) file, judged from the header alone; trailing singleton dimensions do not count."""
    import nibabel as nib

    try:
        return any(n > 1 for n in nib.load(str(path)).shape[3:])
    except Exception:  # unreadable: let load_case report it properly
        return False


def _segment(args: argparse.Namespace) -> int:
    from data.io import write_nifti
    from data.preprocess import preprocess_volume
    from data.types import CaseRef, DataError
    from data.validate import load_case
    from segmentation.evaluate import predict_case
    from segmentation.model import load_model, preprocess_from_checkpoint
    from segmentation.runtime import resolve_device

    model, ckpt = load_model(args.checkpoint, resolve_device(args.device))
    pcfg = preprocess_from_checkpoint(ckpt, args.checkpoint)
    inputs = find_inputs(args.input)
    failed = 0
    for path in inputs:
        name = _stem(path)
        if args.input.is_dir() and _is_series(path):
            print(f"skip {path.name}: 4D series, not a 3D volume")
            continue
        try:
            ref = CaseRef(patient_id=name, phase="", image_path=path, mask_path=None)
            image, _ = load_case(ref, require_mask=False, role="test")
            case = preprocess_volume(image, None, pcfg, ref)
            labels = predict_case(model, case, args.batch_size)
            out = write_nifti(args.output / f"{name}{PRED_SUFFIX}", labels, image.affine, is_label=True)
        except DataError as exc:
            if len(inputs) == 1:
                raise
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path} -> {out}")
    return 1 if failed else 0
