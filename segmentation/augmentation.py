"""`segmentation.augmentation: strong`: nnU-Net-grade 2D augmentation, so that "does synthetic data help?" is asked
against a segmenter that is already augmented the way a strong baseline is, not against light augmentation only.

Source: nnU-Net v2's defaults, `nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py` (`get_training_transforms` and, for
the 2D rotation, `configure_rotation_dummyDA_mirroring_and_inital_patch_size`), all on by default there. v2 has
elastic deformation off (as had v1's nnUNetTrainerV2), so its values come from v1's first trainer
(`nnunet/training/data_augmentation/default_data_augmentation.py`, `default_2D_augmentation_params`).
`StrongAugmentation` holds every value, each with its nnU-Net counterpart; the adaptations, and why:

* images: nnU-Net z-scores MR images; ours are percentile-scaled to [0, 1], with a slice SD of ~0.22 (ACDC, 40
  patients at 1.5 mm / 128 px: median 0.223, 0.17-0.26 for 80 % of slices; the phantom: 0.22). The relative
  ranges (brightness, contrast, gamma, blur, low resolution) carry over as they are; the absolute one, the noise,
  is rescaled by that SD (which makes it about `standard`'s noise);
* probabilities: nnU-Net applies blur and low resolution per channel with p 0.5 inside a per-sample p; with our one
  channel the product is the probability;
* sampling: MONAI draws factors uniformly over a range where nnU-Net's `BGContrast` picks below or above 1 with even
  odds: the same for the ranges symmetric about 1 (brightness, contrast); for gamma (0.7, 1.5) MONAI is below 1 in
  37.5 % of draws, nnU-Net in 50 %;
* rotation: +-30 deg, not nnU-Net's 2D +-180 deg. nnU-Net rotates fully because it cannot assume an orientation;
  here the data stage orients every volume canonically and short-axis planes differ between patients by a few tens
  of degrees, so upside-down hearts would be spent capacity (it is nnU-Net's own 3D range, and twice `standard`'s);
* no mirroring: nnU-Net mirrors each axis with p 0.5, but a single-axis flip mirrors the heart (the RV on the wrong
  side of the septum). `flip_prob` (both axes at once = a 180 deg rotation) applies as in `standard`;
* no translation: a U-Net is translation-equivariant but for its borders (nnU-Net has none beyond where its patch
  falls);
* bias field: not in nnU-Net; added because MR has one and the `gmm` generator draws one (same degree and
  coefficients, `synthesis.gmm`), so that `strong` covers what the generator adds on top of the anatomy.

Spatial transforms come first and move image and label together (label nearest-neighbour); each resamples on its
own (MONAI has no fused affine + elastic with separate probabilities), so the ~10 % of samples that get two or three
of them are interpolated twice or thrice. Intensity transforms touch the image only. Every transform is
`Randomizable`: `TrainStream` gives them its one RandomState, re-seeded per sample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

KEYS = ("image", "label")
SPATIAL_MODES = ("bilinear", "nearest")  # image, label


@dataclass(frozen=True)
class StrongAugmentation:
    """The values of `strong` (p = probability per sample); the nnU-Net default each one follows, in its comment."""

    rotate_deg: float = 30.0  # v2 2D: +-180 deg (+-15 for elongated patches), 3D: +-30; see the module docstring
    rotate_p: float = 0.2  # v2: p_rotation 0.2
    scale: tuple[float, float] = (0.7, 1.4)  # v2: scaling (0.7, 1.4), one factor for both axes; s shows anatomy 1/s
    scale_p: float = 0.2  # v2: p_scaling 0.2
    elastic_px: float = 4.0  # largest displacement: rms 1.65 px ~ v1 2D's rms over its alpha U(0, 200), 1.6 px
    elastic_spacing_px: float = 25.0  # control points: v1's sigma U(9, 13) px gives the same ~16 px correlation
    elastic_p: float = 0.2  # v1: p_eldef 0.2 (v2 and v1's nnUNetTrainerV2: elastic off)
    bias_degree: int = 3  # not in nnU-Net: synthesis.gmm's bias_field_degree
    bias_coeff: float = 0.1  # synthesis.gmm's bias_field_coeff: coefficients U(-0.1, 0.1)
    bias_p: float = 0.15  # the probability nnU-Net gives its other multiplicative changes (brightness, contrast)
    noise_std: float = 0.022  # v2: noise_variance (0, 0.1), drawn uniformly and used as the SD (batchgeneratorsv2
    # GaussianNoiseTransform: np.random.normal(0, sigma)) of z-scored images; x 0.22, our slices' SD
    noise_p: float = 0.1  # v2: 0.1
    blur_sigma: tuple[float, float] = (0.5, 1.0)  # v2: blur_sigma (0.5, 1.0) px, drawn per axis
    blur_p: float = 0.1  # v2: 0.2 x p_per_channel 0.5
    brightness: tuple[float, float] = (0.75, 1.25)  # v2: MultiplicativeBrightness (0.75, 1.25)
    brightness_p: float = 0.15  # v2: 0.15
    contrast: tuple[float, float] = (0.75, 1.25)  # v2: Contrast (0.75, 1.25) about the mean, range preserved
    contrast_p: float = 0.15  # v2: 0.15
    low_res: tuple[float, float] = (0.5, 1.0)  # v2: SimulateLowResolution (0.5, 1): nearest-exact down, bilinear up
    low_res_p: float = 0.125  # v2: 0.25 x p_per_channel 0.5
    gamma: tuple[float, float] = (0.7, 1.5)  # v2: gamma (0.7, 1.5), image statistics retained
    gamma_inverted_p: float = 0.1  # v2: on the inverted image, p 0.1
    gamma_p: float = 0.3  # v2: p 0.3

    def summary(self) -> str:
        """One line for the config's help: every value, in the order applied."""
        lo, hi = self.scale
        return (f"rotation +-{self.rotate_deg:g} deg p {self.rotate_p:g}; scaling {lo:g}-{hi:g} p {self.scale_p:g}; "
                f"elastic <= {self.elastic_px:g} px (control points {self.elastic_spacing_px:g} px apart) "
                f"p {self.elastic_p:g}; bias field (degree {self.bias_degree}, coefficients +-{self.bias_coeff:g}) "
                f"p {self.bias_p:g}; Gaussian noise SD <= {self.noise_std:g} p {self.noise_p:g}; blur sigma "
                f"{_range(self.blur_sigma)} px p {self.blur_p:g}; brightness x{_range(self.brightness)} "
                f"p {self.brightness_p:g}; contrast x{_range(self.contrast)} p {self.contrast_p:g}; low resolution "
                f"x{_range(self.low_res)} p {self.low_res_p:g}; gamma {_range(self.gamma)} p {self.gamma_p:g}, "
                f"on the inverted image p {self.gamma_inverted_p:g}")


STRONG = StrongAugmentation()


def _range(pair: tuple[float, float]) -> str:
    return f"{pair[0]:g}-{pair[1]:g}"


def strong_transforms(spatial_size: tuple[int, int], flip_prob: float,
                      table: StrongAugmentation = STRONG) -> list[Any]:
    """The MONAI dict transforms of `strong` for {"image", "label"} (1, H, W) slices, in nnU-Net's order."""
    from monai.transforms import (RandAdjustContrastd, RandAffined, RandBiasFieldd, RandGaussianNoised,
                                  RandGaussianSmoothd, RandScaleIntensityd, RandScaleIntensityFixedMeand,
                                  RandSimulateLowResolutiond, RandSmoothDeformd, RandZoomd)

    side = min(spatial_size)
    image = "image"
    return [
        RandAffined(keys=KEYS, prob=table.rotate_p, rotate_range=(math.radians(table.rotate_deg),),
                    mode=SPATIAL_MODES, padding_mode="zeros", spatial_size=spatial_size, cache_grid=True),
        RandZoomd(keys=KEYS, prob=table.scale_p, min_zoom=1 / table.scale[1], max_zoom=1 / table.scale[0],
                  mode=SPATIAL_MODES, padding_mode="constant", keep_size=True),
        # A random field on a coarse grid, interpolated and rescaled to its control values' range (so elastic_px
        # is the largest displacement); the grid spans -1..1 over side - 1 pixels with aligned corners, so a zero
        # field is exactly the identity.
        RandSmoothDeformd(keys=KEYS, spatial_size=spatial_size, prob=table.elastic_p,
                          rand_size=[max(2, round((s - 1) / table.elastic_spacing_px) + 1) for s in spatial_size],
                          def_range=table.elastic_px * 2 / (side - 1), field_mode="bicubic", align_corners=True,
                          grid_mode=SPATIAL_MODES, grid_padding_mode="border", grid_align_corners=True),
        both_axes_flip(flip_prob),
        RandBiasFieldd(keys=image, prob=table.bias_p, degree=table.bias_degree,
                       coeff_range=(-table.bias_coeff, table.bias_coeff)),
        RandGaussianNoised(keys=image, prob=table.noise_p, mean=0.0, std=table.noise_std),
        RandGaussianSmoothd(keys=image, prob=table.blur_p, sigma_x=table.blur_sigma, sigma_y=table.blur_sigma),
        RandScaleIntensityd(keys=image, prob=table.brightness_p, factors=_about_one(table.brightness)),
        RandScaleIntensityFixedMeand(keys=image, prob=table.contrast_p, factors=_about_one(table.contrast),
                                     fixed_mean=True, preserve_range=True),
        RandSimulateLowResolutiond(keys=image, prob=table.low_res_p, zoom_range=table.low_res,
                                   downsample_mode="nearest-exact", upsample_mode="bilinear"),
        RandAdjustContrastd(keys=image, prob=table.gamma_inverted_p, gamma=table.gamma, invert_image=True,
                            retain_stats=True),
        RandAdjustContrastd(keys=image, prob=table.gamma_p, gamma=table.gamma, retain_stats=True),
    ]


def both_axes_flip(prob: float):
    """Both in-plane axes at once = a 180 degree rotation, which keeps the heart's handedness (a single-axis flip
    would mirror it and put the RV on the wrong side of the septum)."""
    from monai.transforms import RandFlipd

    return RandFlipd(keys=KEYS, prob=prob, spatial_axis=(0, 1))


def _about_one(factors: tuple[float, float]) -> tuple[float, float]:
    """MONAI's scale factors f multiply by 1 + f."""
    return factors[0] - 1.0, factors[1] - 1.0
