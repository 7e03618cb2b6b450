"""Small cases for the segmentation tests: a disc (LV) in a ring (MYO) beside a disc (RV), in memory or as files."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from data.config import PreprocessConfig
from data.preprocess import preprocess_volume
from data.types import CaseRef, PreparedCase, Volume
from segmentation.config import SegmentationConfig

# Intensity of each label in the synthetic images (bg, RV, MYO, LV), roughly like bright-blood cine MR.
CONTRAST = (0.1, 0.7, 0.3, 0.85)


def heart_volume(shape=(32, 32, 4), seed: int = 0, *, lv_radius: float = 4.5, label_image: bool = False):
    """(image, mask) in the file's (X, Y, Z) order; `label_image=True` gives image = mask / 3 exactly."""
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    mask = np.zeros(shape, np.uint8)
    for z in range(shape[2]):
        cx, cy = shape[0] / 2 + rng.normal(0, 1), shape[1] / 2 + rng.normal(0, 1)
        r = lv_radius * (1.0 - 0.08 * abs(z - shape[2] / 2))
        d = np.hypot(xx - cx, yy - cy)
        mask[..., z][np.hypot(xx - cx, yy - (cy - 2.1 * r)) < 0.9 * r] = 1
        mask[..., z][d < 1.4 * r] = 2
        mask[..., z][d < r] = 3
    if label_image:
        return mask.astype(np.float32) / 3.0, mask
    image = np.asarray(CONTRAST, np.float32)[mask] + rng.normal(0, 0.05, shape).astype(np.float32)
    return image, mask


def prepared_case(patient: str = "p0", phase: str = "ED", *, seed: int = 0, size: int = 32, shape=(32, 32, 4),
                  spacing=(1.5, 1.5, 8.0), lv_radius: float = 4.5, label_image: bool = False) -> PreparedCase:
    """A PreparedCase built in memory through the real preprocessing (no files)."""
    image, mask = heart_volume(shape, seed, lv_radius=lv_radius, label_image=label_image)
    affine = np.diag([*spacing, 1.0])
    ref = CaseRef(patient, phase, Path(f"/nonexistent/{patient}_{phase}.nii.gz"), None)
    cfg = PreprocessConfig(target_spacing=spacing[0], crop_size=size,
                           clip_percentiles=[0.0, 100.0] if label_image else [0.5, 99.5])
    return preprocess_volume(Volume(image, affine), Volume(mask, affine), cfg, ref)


def write_case(folder: Path, name: str, image: np.ndarray, mask: np.ndarray | None, affine: np.ndarray) -> CaseRef:
    """Image (+ mask) NIfTI files; a CaseRef pointing at them (phase = the part after the last '_')."""
    folder.mkdir(parents=True, exist_ok=True)
    image_path = folder / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(image_path))
    mask_path = None
    if mask is not None:
        mask_path = folder / f"{name}_gt.nii.gz"
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(mask_path))
    patient, phase = name.rsplit("_", 1)
    return CaseRef(patient, phase, image_path, mask_path)


def tiny_config(**overrides) -> SegmentationConfig:
    base = dict(channels=[4, 8, 16], strides=[2, 2], num_res_units=1, batch_size=4, steps=6, val_every=3,
                lr=1e-2, device="cpu")
    base.update(overrides)
    return SegmentationConfig(**base)


class OracleNet(torch.nn.Module):
    """Reads the label back from a label image (image = mask / 3): a perfect 'network' for geometry tests."""

    def __init__(self) -> None:
        super().__init__()
        self.centres = torch.nn.Parameter(torch.arange(4, dtype=torch.float32).view(1, 4, 1, 1) / 3.0,
                                          requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -1000.0 * (x - self.centres) ** 2
