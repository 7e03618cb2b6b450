"""`gmm`: the non-learned baseline. Labels -> intensities, in the spirit of SynthSeg (Billot et al., 2023) and
TorchIO's RandomLabelsToImage, but with the intensity statistics measured on the real training slices.

fit: per label the mean and the fine-scale texture (spread of the image minus its local mean, inside the
label); the joint spread of the labels' means between slices (a 4-D Gaussian: bright blood pool and dark
myocardium move together); for the background a 1-D Gaussian mixture (lung, muscle/liver, fat...).
sample, per volume (= per seed), all slices sharing one draw:

1. label means from the fitted 4-D Gaussian (`style_scale` widens or narrows it);
2. background: random smooth regions ("organs"), each connected region one constant intensity drawn from one
   mixture component (area fractions = mixture weights); structures: their mean; everywhere low-pass texture
   of the label's fitted fine-scale spread;
3. MONAI transforms: Gaussian blur (partial volume), one polynomial bias field for the whole volume, Rician
   noise; clipped to [0, 1].

Two ways to put the torso back (issue 8: the heart mask leaves it unconstrained), both from the real slice a mask
was drawn or deformed from (`context`):

* `tissue_classes` = K > 0: the background of that slice is labelled with K intensity classes fitted on the
  training slices (`synthesis.tissue`); each class is one more label of the joint Gaussian of step 1, so the
  torso keeps its real layout (lungs, chest wall, liver) with randomised, correlated intensities;
* `background: real`: the real slice is kept outside the heart and only the heart is painted (blended over
  the partial-volume edge), a background-preserving mode.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from monai.transforms import Compose, GaussianSmooth, RandBiasField, RandRicianNoise
from monai.utils import convert_to_numpy
from scipy import ndimage

from synthesis.base import Generator, check_masks, check_pair, register, require_context, save_sample_grid
from synthesis.config import GeneratorConfig

MIN_PIXELS = 20  # a structure smaller than this in a slice says little about its intensity
TEXTURE_SCALE_PX = 2.0  # "fine scale": detail finer than a Gaussian of this sigma (pixels)
GRID_MASKS, GRID_STYLES = 6, 3


@dataclass
class GMMConfig(GeneratorConfig):
    """Label-wise intensity model (SynthSeg / TorchIO RandomLabelsToImage style); all sizes in pixels."""

    bg_components: int = field(default=3, metadata={"min": 1, "max": 8,
                               "help": "Gaussian components of the background intensity mixture"})
    style_scale: float = field(default=1.0, metadata={"min": 0.0, "max": 5.0,
                               "help": "spread of the per-volume label means around the fitted ones "
                                       "(1 = the spread between real slices, 0 = always the fitted means)"})
    texture_sigma: float = field(default=1.0, metadata={"min": 0.0, "max": 20.0,
                                 "help": "correlation length (Gaussian sigma, pixels) of the texture"})
    texture_scale: float = field(default=1.0, metadata={"min": 0.0, "max": 5.0,
                                 "help": "texture amplitude relative to the fitted fine-scale spread per label"})
    bg_blob_sigma: float = field(default=8.0, metadata={"min": 0.5, "max": 50.0,
                                 "help": "size (Gaussian sigma, pixels) of the random background regions, each "
                                         "of one intensity drawn from one mixture component"})
    partial_volume_sigma: float = field(default=0.8, metadata={"min": 0.0, "max": 10.0,
                                        "help": "Gaussian blur (pixels) for partial-volume edges"})
    bias_field_degree: int = field(default=3, metadata={"min": 1, "max": 6,
                                   "help": "polynomial degree of the multiplicative bias field (MONAI RandBiasField)"})
    bias_field_coeff: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0,
                                    "help": "bias-field coefficients drawn from [-c, c]; one field per volume"})
    noise_std: float = field(default=0.02, metadata={"min": 0.0, "max": 0.5,
                             "help": "largest Rician noise level (drawn per volume from [0, noise_std]; "
                                     "intensity units of the [0, 1] images)"})
    background: str = field(default="synthetic", metadata={
        "choices": ["synthetic", "real"],
        "help": "synthetic: painted, by tissue class (tissue_classes > 0) or as random regions; real: the real "
                "slice the mask was drawn or deformed from (warped alike) is kept and only the heart is "
                "synthesised (background-preserving mode; needs mask sources real/deformed)"})

    def context_settings(self) -> list[str]:
        return super().context_settings() + (["background"] if self.background == "real" else [])


@register("gmm")
class GMMGenerator(Generator):
    config: GMMConfig
    config_class: ClassVar[type[GMMConfig]] = GMMConfig

    def __init__(self, config: GMMConfig | None = None):
        super().__init__(config)
        self.params: dict[str, np.ndarray] | None = None

    def fit(self, masks: np.ndarray, images: np.ndarray, out_dir: Path | str, *, seed: int = 0,
            dist: Any = None) -> dict[str, Any]:
        masks, images = check_pair(masks, images)
        rng = np.random.default_rng(seed)
        labels = self.fit_tissue(masks, images, seed)  # heart labels, + tissue classes when configured
        n_labels = self.n_labels
        per_slice = np.full((len(masks), n_labels), np.nan)  # mean of each label in each slice
        texture = np.full((len(masks), n_labels), np.nan)  # fine-scale spread inside each label
        detail = images - ndimage.gaussian_filter(images, sigma=(0, TEXTURE_SCALE_PX, TEXTURE_SCALE_PX))
        for i, (m, x) in enumerate(zip(labels, images)):
            for k in np.unique(m):
                inside = m == k
                if inside.sum() >= MIN_PIXELS:
                    per_slice[i, k] = x[inside].mean()
                    core = ndimage.binary_erosion(inside)  # away from edges: texture, not partial volume
                    texture[i, k] = detail[i][core if core.sum() >= MIN_PIXELS else inside].std()
        present = ~np.isnan(per_slice).all(axis=0)  # label 0 is absent when every background pixel has a class
        missing = [k for k in range(n_labels) if not present[k] and (k > 0 or self.tissue is None)]
        if missing:
            raise ValueError(f"masks: labels {missing} never cover {MIN_PIXELS} pixels in a slice; cannot fit their "
                             f"intensities")
        background = images[masks == 0]
        background = rng.choice(background, min(len(background), 50_000), replace=False)
        weights, means, sds = fit_gmm_1d(background, self.config.bg_components)
        mean = np.where(present, np.nanmean(np.where(present, per_slice, 0.0), axis=0), float(weights @ means))
        complete = per_slice[:, present][~np.isnan(per_slice[:, present]).any(axis=1)]
        cov = np.zeros((n_labels, n_labels))
        if len(complete) >= 2 * present.sum():
            cov[np.ix_(present, present)] = np.cov(complete, rowvar=False)
        else:  # too few slices with every label: independent spreads
            cov[np.ix_(present, present)] = np.diag(np.nan_to_num(np.nanvar(per_slice[:, present], axis=0)))
        texture_sd = np.nanmedian(np.where(present, texture, np.nanmedian(texture)), axis=0)
        self.params = {"style_mean": mean, "style_cov": cov, "texture_sd": texture_sd,
                       "bg_weights": weights, "bg_means": means, "bg_sds": sds}
        out_dir = Path(out_dir)
        grid = np.sort(rng.choice(len(masks), min(GRID_MASKS, len(masks)), replace=False))
        rows = {"real": images[grid], **{f"seed {s}": self.sample(masks[grid], seed=s, context=images[grid])
                                         for s in range(GRID_STYLES)}}
        save_sample_grid(out_dir / "samples" / "step_000000.png", labels[grid], rows, title="gmm")
        return {"slices_fitted": int(len(masks)), "slices_with_all_labels": int(len(complete)),
                "label_means": [round(float(v), 4) for v in mean],
                "tissue_thresholds": list(self.tissue.thresholds) if self.tissue else [],
                "background_components": [[round(float(v), 4) for v in row] for row in (weights, means, sds)]}

    def sample(self, masks: np.ndarray, *, seed: int, context: np.ndarray | None = None) -> np.ndarray:
        if self.params is None:
            raise RuntimeError("gmm: fit or load the generator before sampling")
        masks = check_masks(masks)
        cfg, p = self.config, self.params
        if cfg.background == "real":
            context = require_context(context, masks, "gmm: background 'real' keeps the real slice outside the heart")
        # label 0 (background without a class) only where no real slice tells the tissue: random regions there
        labels = self.conditions(masks, context) if context is not None else masks
        rng = np.random.default_rng(seed)
        n, h, w = masks.shape
        if n == 0:
            return np.zeros(masks.shape, np.float32)
        label_means = rng.multivariate_normal(p["style_mean"], cfg.style_scale ** 2 * p["style_cov"],
                                              method="eigh")
        bg_means = p["bg_means"] + (label_means[0] - p["style_mean"][0])
        component = quantile_regions(smooth_noise(rng, (n, h, w), cfg.bg_blob_sigma), p["bg_weights"])
        background = region_intensities(component, bg_means, p["bg_sds"], rng)
        texture = smooth_noise(rng, (n, h, w), cfg.texture_sigma) * p["texture_sd"][labels] * cfg.texture_scale
        image = np.where(labels == 0, background, label_means[labels]) + texture
        blur = GaussianSmooth(sigma=cfg.partial_volume_sigma) if cfg.partial_volume_sigma > 0 else None
        image = image.astype(np.float32)
        if blur is not None:
            image = convert_to_numpy(blur(image))
        if cfg.background == "real":  # the real slice outside the heart, blended over the partial-volume edge
            heart = (masks > 0).astype(np.float32)
            weight = np.clip(convert_to_numpy(blur(heart)), 0, 1) if blur is not None else heart
            image = weight * image + (1 - weight) * context
        # slices as channels: the 2D transforms see one volume, so the bias field is shared by all slices
        finish = Compose([
            RandBiasField(degree=cfg.bias_field_degree, coeff_range=(-cfg.bias_field_coeff, cfg.bias_field_coeff),
                          prob=1.0),
            RandRicianNoise(prob=1.0, std=cfg.noise_std, sample_std=True),
        ])
        finish.set_random_state(seed=int(rng.integers(2**31)))
        image = convert_to_numpy(finish(image.astype(np.float32)))
        return np.clip(image, 0.0, 1.0).astype(np.float32)

    def state(self) -> dict[str, Any]:
        if self.params is None:
            raise RuntimeError("gmm: nothing to save before fit")
        return {**{k: v.tolist() for k, v in self.params.items()}, "tissue": self.tissue_state()}

    def restore(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self.restore_tissue(state.pop("tissue", None))
        self.params = {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma: float) -> np.ndarray:
    """Per-slice low-pass white noise with unit standard deviation."""
    noise = rng.standard_normal(shape)
    if sigma > 0:
        noise = ndimage.gaussian_filter(noise, sigma=(0, sigma, sigma), mode="reflect")
    return noise / max(noise.std(), 1e-8)


def quantile_regions(field: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per slice, cut `field` at its quantiles so that region k covers a fraction weights[k] of the slice."""
    cuts = np.cumsum(weights)[:-1]
    thresholds = np.quantile(field.reshape(len(field), -1), cuts, axis=1).T  # (N, K - 1)
    return (field[..., None] > thresholds[:, None, None, :]).sum(-1)


def region_intensities(component: np.ndarray, means: np.ndarray, sds: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
    """One intensity per connected region of each component, drawn from that component's Gaussian."""
    out = np.empty(component.shape)
    for i, slice_components in enumerate(component):
        for c in range(len(means)):
            regions, count = ndimage.label(slice_components == c)
            values = rng.normal(means[c], sds[c], count + 1)
            out[i][regions > 0] = values[regions[regions > 0]]
    return out


def fit_gmm_1d(x: np.ndarray, k: int, iters: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximum-likelihood 1-D Gaussian mixture by EM from quantile starts; components sorted by mean."""
    x = np.asarray(x, dtype=np.float64)
    means = np.quantile(x, (np.arange(k) + 0.5) / k)
    sds = np.full(k, max(x.std() / k, 1e-3))
    weights = np.full(k, 1.0 / k)
    for _ in range(iters):
        log_p = -0.5 * ((x[:, None] - means) / sds) ** 2 - np.log(sds) + np.log(weights)
        log_p -= log_p.max(axis=1, keepdims=True)
        resp = np.exp(log_p)
        resp /= resp.sum(axis=1, keepdims=True)
        nk = resp.sum(axis=0) + 1e-9
        weights = nk / len(x)
        means = (resp * x[:, None]).sum(axis=0) / nk
        sds = np.sqrt((resp * (x[:, None] - means) ** 2).sum(axis=0) / nk) + 1e-3
    order = np.argsort(means)
    return weights[order], means[order], sds[order]
