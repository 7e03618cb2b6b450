"""Is a generator's output faithful, varied and not a copy of its training data? One CSV row per generator.

A Dice gain from synthetic data is only believable next to evidence about the images themselves. Every
metric here compares a *set* of slices with the real data, and the same code scores the real held-out
(validation) images as if they were a generator's output, so the reference row says what a perfect
generator would get at the same sample sizes:

- Segmentation consistency (the SPADE paper's test): the real-only segmenter segments images synthesised
  from held-out masks; 3D Dice against those masks, next to its Dice on the real images of the same masks.
- Fréchet distance and KID in the feature space of that segmenter (`segmenter_features`; no downloaded
  Inception weights): synthetic (from held-out masks) vs real training slices. Noise floor: the same
  distances between two disjoint patient halves of the real training slices.
- Memorisation: nearest real training slice of each synthetic slice by normalised L2 (`index_training_set`),
  judged against the nearest-neighbour distances between real training slices of different patients.
- Diversity: the same masks sampled with several style seeds (`diversity`).
- Intensity statistics per label (`intensity_stats`).

Inputs are float32 slices (N, H, W) in [0, 1] and uint8 masks (N, H, W), as in `PreparedCase`; held-out
and training sets are `PreparedCase`-like objects (`.image`, `.mask`, `.patient_id`). Orchestration (which
segmenter, which generators, where the CSV goes) is the pipeline's.
"""
from __future__ import annotations

import warnings
from types import SimpleNamespace
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
from monai.metrics import SSIMMetric
from monai.networks.layers import SkipConnection
from monai.networks.nets import DynUNet, UNet
from scipy import linalg
from tqdm import tqdm

from data.types import LABELS
from synthesis.base import save_image_grid
from synthesis.config import QualityConfig

DUPLICATE_DISTANCE = 1e-3  # normalised L2 below which two real slices count as the same image (r > 0.9999995)


class Sampler(Protocol):  # synthesis.base.Generator, or anything with its `sample`
    def sample(self, masks: np.ndarray, *, seed: int, context: np.ndarray | None = None) -> np.ndarray: ...


class CaseLike(Protocol):  # data.types.PreparedCase
    image: np.ndarray
    mask: np.ndarray | None
    patient_id: str


# ---------------------------------------------------------------------------------------------- features


class _StopForward(Exception):
    """Raised by the last feature hook: the decoder's work is not needed."""


def feature_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The encoder blocks, finest first, then the bottleneck, of a MONAI `UNet` or `DynUNet`.

    UNet is nested: `model.model = Sequential(down, SkipConnection(Sequential(down, SkipConnection(...), up)),
    up)`, the innermost `SkipConnection.submodule` being the bottleneck. DynUNet names them
    `input_block`, `downsamples`, `bottleneck`.
    """
    if isinstance(model, UNet):
        modules, node = [], model.model
        while True:
            modules.append(node[0])
            inner = node[1].submodule
            if isinstance(inner, torch.nn.Sequential) and len(inner) == 3 and isinstance(inner[1], SkipConnection):
                node = inner
            else:
                return modules + [inner]
    if isinstance(model, DynUNet):
        return [model.input_block, *model.downsamples, model.bottleneck]
    raise TypeError(f"segmenter_features: expected a MONAI UNet or DynUNet (segmentation.model.build_model), "
                    f"got {type(model).__name__}")


def segmenter_features(model: torch.nn.Module, images: np.ndarray, batch_size: int = 32, *,
                       progress: bool = False) -> np.ndarray:
    """(N, H, W) slices -> (N, D) float64 features of the segmenter's encoder, for FD/KID.

    Exactly: the output of every encoder block (MONAI UNet: each down block, i.e. after its last
    convolution + InstanceNorm + PReLU, at 1/2, 1/4, ... of the input side; DynUNet: `input_block` and each
    of `downsamples`) and of the bottleneck, each averaged over the image plane (global average pooling, as
    Inception's pool3 in FID), concatenated finest to deepest. D = sum of the network's channels (UNet
    `channels`, DynUNet `filters`): 496 for the default [16, 32, 64, 128, 256]. The decoder is not run; it
    encodes the segmentation, not the image's appearance. Like the segmenter, the features are nearly
    invariant to a global affine change of intensity (instance normalisation after every convolution), so
    FD/KID measure what the segmenter sees; absolute intensities are `intensity_stats`' job.
    """
    images = _check_images(images, "images")
    modules = feature_modules(model)
    device = next(model.parameters()).device
    pooled: list[torch.Tensor] = []

    def hook(module, inputs, output):
        pooled.append(output.float().mean(dim=(2, 3)))
        if module is modules[-1]:
            raise _StopForward

    handles = [m.register_forward_hook(hook) for m in modules]
    model.eval()
    batches = []
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress,
                              leave=False, mininterval=2.0):
                pooled.clear()
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size, None]))
                try:
                    model(x.to(device))
                except _StopForward:
                    pass
                batches.append(torch.cat(pooled, dim=1).cpu())
    finally:
        for h in handles:
            h.remove()
    if not batches:
        return np.zeros((0, 0))
    return torch.cat(batches).double().numpy()


# ---------------------------------------------------------------------------------------- distances


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) (FID's formula).

    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with `eps` added to both covariances' diagonal
    (pytorch-fid's remedy for singular ones, always applied here, so that identical sets give exactly 0).
    tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric PSD
    matrix S_a^(1/2) S_b S_a^(1/2) (same spectrum), which never produces the complex parts that
    `scipy.linalg.sqrtm` of the non-symmetric product does. Biased upward at small N: compare values at
    equal set sizes only.
    """
    a, b = _feature_pair(a, b, minimum=2)
    offset = eps * np.eye(a.shape[1])
    cov_a = np.atleast_2d(np.cov(a, rowvar=False)) + offset
    cov_b = np.atleast_2d(np.cov(b, rowvar=False)) + offset
    w, v = linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    product = root_a @ cov_b @ root_a
    tr_covmean = np.sqrt(np.clip(linalg.eigvalsh((product + product.T) / 2), 0.0, None)).sum()
    diff = a.mean(axis=0) - b.mean(axis=0)
    return float(max(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_covmean, 0.0))


def kernel_distance(a: np.ndarray, b: np.ndarray, subsets: int = 50, subset_size: int = 100,
                    seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al., 2018) on any features: (mean, sd) over random subsets.

    Unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / D + 1)^3 between `subset_size` slices drawn
    without replacement from each set (lowered to the smaller set's size). Unbiased: ~0 (may be slightly
    negative) for two samples of one distribution, whatever N.
    """
    a, b = _feature_pair(a, b, minimum=2)
    m = min(int(subset_size), len(a), len(b))
    if m < 2 or subsets < 1:
        raise ValueError(f"kernel_distance: subset_size ({subset_size}) and subsets ({subsets}) must allow at least "
                         f"2 slices in at least 1 subset")
    rng = np.random.default_rng(seed)
    dim = a.shape[1]
    values = []
    for _ in range(int(subsets)):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        k_xx, k_yy, k_xy = ((x @ x.T / dim + 1) ** 3, (y @ y.T / dim + 1) ** 3, (x @ y.T / dim + 1) ** 3)
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values.append(within - 2.0 * k_xy.mean())
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


# -------------------------------------------------------------------------------------- memorisation


@dataclass
class TrainingIndex:
    """Real training slices prepared for nearest-neighbour search, with their own nearest other-patient slice.

    `distance[i]` is the distance from slice i to the nearest slice of a DIFFERENT patient (slices of one
    patient - neighbouring slices, ED and ES - are near-copies of each other and do not count): the
    reference for how close two independent images can come. Slices of two patients that are identical
    (distance < DUPLICATE_DISTANCE: the same scan filed twice, as ACDC's patient074 and patient076) are
    not independent either; they are skipped too and listed in `duplicates`.
    """

    images: np.ndarray  # (N, H, W) full resolution, for SSIM and the report grid
    groups: np.ndarray  # (N,) patient ids
    vectors: np.ndarray  # (N, P) centred, unit-norm, downsampled slices
    distance: np.ndarray  # (N,) to the nearest other-patient slice
    ssim: np.ndarray  # (N,) SSIM of that pair
    duplicates: list[tuple[str, str]]  # pairs of patients with identical slices
    size: int  # side the slices were downsampled to (at most) for the search

    @property
    def threshold(self) -> float:
        """The closest real-real pair: a slice closer than this to a training slice is suspicious."""
        return float(self.distance.min())

    @property
    def ssim_threshold(self) -> float:
        """The most similar real-real pair by SSIM: a copy is also more similar than this."""
        return float(self.ssim.max())


@dataclass
class MemorisationResult:
    distance: np.ndarray  # (M,) normalised L2 to the nearest training slice (0 = identical up to brightness/contrast)
    nearest: np.ndarray  # (M,) its index in the TrainingIndex
    ssim: np.ndarray  # (M,) SSIM (full resolution, data range 1) of each slice and its nearest training slice
    memorised_fraction: float  # closer AND more similar (SSIM) than any real-real (different patients) pair
    closer_than_real_fraction: float  # closer (normalised L2) than the closest real-real pair, whatever the SSIM
    below_real_p1_fraction: float  # closer than the 1st percentile of real-real nearest distances
    flagged: bool  # memorised_fraction > the configured flag fraction
    pairs: pd.DataFrame  # the closest pairs: set_index, train_index, distance, ssim (closest first)

    def summary(self, index: TrainingIndex) -> dict[str, Any]:
        return {"memorised_fraction": self.memorised_fraction,
                "closer_than_real_fraction": self.closer_than_real_fraction,
                "below_real_p1_fraction": self.below_real_p1_fraction,
                "memorisation_flagged": bool(self.flagged),
                "nn_distance_median": float(np.median(self.distance)),
                "nn_distance_p5": float(np.percentile(self.distance, 5)),
                "nn_distance_min": float(self.distance.min()),
                "nn_ssim_median": float(np.median(self.ssim)),
                "nn_ssim_max": float(self.ssim.max()),
                "real_nn_distance_min": index.threshold,
                "real_nn_distance_p1": float(np.percentile(index.distance, 1)),
                "real_nn_distance_median": float(np.median(index.distance)),
                "real_nn_ssim_median": float(np.median(index.ssim)),
                "real_nn_ssim_max": index.ssim_threshold,
                "real_duplicate_patients": " ".join(f"{a}={b}" for a, b in index.duplicates)}


def index_training_set(images: np.ndarray, groups: Sequence[str] | np.ndarray, size: int = 64) -> TrainingIndex:
    """Prepare the real training slices for `memorisation`; `groups` are their patient ids (>= 2 patients)."""
    images = _check_images(images, "real training images")
    groups = np.asarray(groups)
    if groups.shape != (len(images),):
        raise ValueError(f"real training groups: expected one patient id per slice ({len(images)}), "
                         f"got shape {groups.shape}")
    if len(np.unique(groups)) < 2:
        raise ValueError("real training groups: need slices of at least 2 patients for the real-real reference")
    vectors = _unit_vectors(images, size)
    distance, nearest, duplicate = _nearest(vectors, vectors, groups, groups, skip_below=DUPLICATE_DISTANCE)
    if not np.isfinite(distance).all():
        raise ValueError("real training images: some slices have no non-identical slice of another patient")
    dup_pairs = sorted({tuple(sorted((str(groups[i]), str(groups[j])))) for i, j in duplicate})
    if dup_pairs:
        warnings.warn(f"real training images: patients with identical slices (the same scan filed twice; they "
                      f"should share a split): {dup_pairs}", stacklevel=2)
    return TrainingIndex(images=images, groups=groups, vectors=vectors, distance=distance,
                         ssim=pairwise_ssim(images, images[nearest]), duplicates=dup_pairs, size=size)


def memorisation(images: np.ndarray, index: TrainingIndex, *, flag_fraction: float = 0.05,
                 n_pairs: int = 8, min_ssim: float = 0.5) -> MemorisationResult:
    """Nearest real training slice of each slice in `images`; is the set made of (near-)copies?

    Distance: both slices area-downsampled to the index's size, centred and scaled to unit norm, then L2;
    = sqrt(2 (1 - Pearson r)), in [0, 2], blind to brightness and contrast. All slices share the data
    stage's crop (same field of view), so no further alignment is done. A set is flagged when more than
    `flag_fraction` of its slices are closer to a training slice than the closest pair of slices of two
    different real patients (`TrainingIndex.threshold`). For an independent set about 2/N of the slices
    fall below it by chance (the real-real minimum is over ~N^2/2 pairs, a slice's nearest over N), so
    `flag_fraction` should stay well above 2 / (number of training slices).
    """
    images = _check_images(images, "images")
    if images.shape[1:] != index.images.shape[1:]:
        raise ValueError(f"images: slices {images.shape[1:]} differ from the training slices "
                         f"{index.images.shape[1:]}")
    distance, nearest, _ = _nearest(_unit_vectors(images, index.size), index.vectors)
    ssim = pairwise_ssim(images, index.images[nearest])
    closer = distance < index.threshold
    fraction = float(np.mean(closer & (ssim > max(index.ssim_threshold, min_ssim))))
    order = np.argsort(distance, kind="stable")[:n_pairs]
    pairs = pd.DataFrame({"set_index": order, "train_index": nearest[order], "distance": distance[order],
                          "ssim": ssim[order]})
    return MemorisationResult(distance=distance, nearest=nearest, ssim=ssim, memorised_fraction=fraction,
                              closer_than_real_fraction=float(np.mean(closer)),
                              below_real_p1_fraction=float(np.mean(distance < np.percentile(index.distance, 1))),
                              flagged=fraction > flag_fraction, pairs=pairs)


def _unit_vectors(images: np.ndarray, size: int) -> np.ndarray:
    """Area-downsampled (to at most size x size), centred, unit-norm rows; a constant slice -> zeros."""
    x = torch.from_numpy(np.ascontiguousarray(images[:, None], dtype=np.float32))
    if max(x.shape[-2:]) > size:
        x = torch.nn.functional.adaptive_avg_pool2d(x, (min(size, x.shape[-2]), min(size, x.shape[-1])))
    v = x.flatten(1).double().numpy()
    v = v - v.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 1e-12)


def _nearest(queries: np.ndarray, refs: np.ndarray, query_groups: np.ndarray | None = None,
             ref_groups: np.ndarray | None = None, *, skip_below: float | None = None,
             chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """L2 distance and index of each query's nearest reference row, skipping references of the query's group
    and, with `skip_below`, references closer than that (returned as (query, reference) index pairs)."""
    ref_sq = (refs ** 2).sum(axis=1)
    distance, nearest = np.empty(len(queries)), np.empty(len(queries), dtype=np.int64)
    skipped: list[tuple[int, int]] = []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        d2 = np.clip((q ** 2).sum(axis=1)[:, None] + ref_sq[None] - 2.0 * q @ refs.T, 0.0, None)
        if query_groups is not None:
            d2[query_groups[start:start + chunk, None] == ref_groups[None]] = np.inf
        if skip_below is not None:
            close = d2 < skip_below ** 2
            skipped += [(start + int(i), int(j)) for i, j in zip(*np.nonzero(close))]
            d2[close] = np.inf
        rows = np.argmin(d2, axis=1)
        nearest[start:start + chunk] = rows
        distance[start:start + chunk] = np.sqrt(d2[np.arange(len(q)), rows])
    return distance, nearest, skipped


def pairwise_ssim(a: np.ndarray, b: np.ndarray, chunk: int = 256) -> np.ndarray:
    """SSIM (MONAI, Gaussian window 11, data range 1) of a[i] and b[i] for every i -> (N,)."""
    metric = SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")
    out = []
    with torch.inference_mode():
        for start in range(0, len(a), chunk):
            x = torch.from_numpy(np.ascontiguousarray(a[start:start + chunk, None], dtype=np.float32))
            y = torch.from_numpy(np.ascontiguousarray(b[start:start + chunk, None], dtype=np.float32))
            out.append(metric(x, y).reshape(-1))
    return torch.cat(out).double().numpy() if out else np.zeros(0)


# ------------------------------------------------------------------------------------------ diversity


def diversity(generator: Sampler, masks: np.ndarray, n_styles: int = 4, seed: int = 0,
              context: np.ndarray | None = None) -> dict[str, Any]:
    """How much do images change with the style seed alone? ~0 = mode collapse.

    Each mask (best from different patients) is sampled with `n_styles` seeds (seed, seed + 1, ...).
    `diversity_l1` / `diversity_one_minus_ssim`: mean absolute difference / 1 - SSIM between two styles of
    the same mask, over all style pairs and masks. Reference, `diversity_between_l1`: the same L1 between
    different masks under the same style (mask i against mask i + N/2), i.e. how much the image changes
    with anatomy alone. `diversity_ratio` = within / between: ~0 for a generator that ignores the seed,
    >> 1 for one that ignores the mask. Also returns `samples` (n_styles, N, H, W) for a figure.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or len(masks) < 1:
        raise ValueError(f"diversity: masks must be (N, H, W) with N >= 1, got shape {masks.shape}")
    if n_styles < 2:
        raise ValueError(f"diversity: n_styles must be >= 2, got {n_styles}")
    samples = np.stack([np.asarray(generator.sample(masks, seed=seed + s, context=context), np.float32)
                        for s in range(n_styles)])
    pairs = list(combinations(range(n_styles), 2))
    first = np.concatenate([samples[i] for i, _ in pairs])
    second = np.concatenate([samples[j] for _, j in pairs])
    within_l1 = float(np.abs(first - second).mean())
    within_ssim = float(1.0 - pairwise_ssim(first, second).mean())
    between_l1 = between_l1_distance(samples)
    # The same two distances over the heart only (for `between`, the union of both masks' hearts): a generator
    # that keeps the real background (background: real) changes nothing else with its seed, while the real
    # slices behind two masks differ everywhere, so the whole-slice ratio is small by construction for it.
    heart = masks > 0
    within_heart = _masked_mean(np.abs(first - second), np.concatenate([heart] * len(pairs)))
    between_heart = float("nan") if len(masks) < 2 else _masked_mean(
        np.abs(samples - np.roll(samples, len(masks) // 2, axis=1)),
        np.broadcast_to(heart | np.roll(heart, len(masks) // 2, axis=0), samples.shape))
    return {"diversity_l1": within_l1, "diversity_one_minus_ssim": within_ssim,
            "diversity_between_l1": between_l1,
            "diversity_ratio": within_l1 / between_l1 if between_l1 > 0 else float("nan"),
            "diversity_heart_l1": within_heart,
            "diversity_heart_ratio": within_heart / between_heart if between_heart > 0 else float("nan"),
            "samples": samples}


def _masked_mean(values: np.ndarray, where: np.ndarray) -> float:
    return float(values[where].mean()) if where.any() else float("nan")


def between_l1_distance(samples: np.ndarray) -> float:
    """Mean |image of mask i - image of mask i + N/2| under the same style; samples (styles, N, H, W)."""
    n = samples.shape[1]
    if n < 2:
        return float("nan")
    return float(np.abs(samples - np.roll(samples, n // 2, axis=1)).mean())


# ---------------------------------------------------------------------------------- intensity, Dice


def intensity_stats(images: np.ndarray, masks: np.ndarray) -> pd.DataFrame:
    """Per label (background, RV, MYO, LV): mean and sd (population) of the intensities, and pixel count."""
    images, masks = np.asarray(images), np.asarray(masks)
    if images.shape != masks.shape:
        raise ValueError(f"intensity_stats: images {images.shape} and masks {masks.shape} differ in shape")
    rows = []
    for label, name in LABELS.items():
        values = images[masks == label].astype(np.float64)
        rows.append({"label": label, "structure": name, "mean": values.mean() if values.size else np.nan,
                     "sd": values.std() if values.size else np.nan, "n_pixels": int(values.size)})
    return pd.DataFrame(rows)


def segmentation_consistency(model: torch.nn.Module, images_by_case: Sequence[np.ndarray],
                             masks_by_case: Sequence[np.ndarray], batch_size: int = 32) -> dict[str, float]:
    """3D Dice (per structure and mean, averaged over volumes) of the model's prediction on each (S, H, W)
    volume against its mask: the segmentation stage's validation Dice (`segmentation.train.evaluate`,
    both empty -> 1, one empty -> 0), on volumes that need not be PreparedCases."""
    from segmentation.train import evaluate

    if len(images_by_case) != len(masks_by_case) or not len(images_by_case):
        raise ValueError(f"segmentation_consistency: expected as many masks as image volumes (>= 1), got "
                         f"{len(images_by_case)} volumes and {len(masks_by_case)} masks")
    for image, mask in zip(images_by_case, masks_by_case):
        if np.shape(image) != np.shape(mask):
            raise ValueError(f"segmentation_consistency: volume {np.shape(image)} and mask {np.shape(mask)} differ")
    cases = [SimpleNamespace(image=np.asarray(image, np.float32), mask=mask)
             for image, mask in zip(images_by_case, masks_by_case)]
    return evaluate(model, cases, batch_size)


# ----------------------------------------------------------------------------------------- one row


@dataclass
class QualityReference:
    """What every row is compared with, computed once per segmenter: see `build_reference`."""

    model: torch.nn.Module
    cfg: QualityConfig
    heldout_images: list[np.ndarray]  # per held-out case (S, H, W)
    heldout_masks: list[np.ndarray]
    set_indices: np.ndarray  # slices of the concatenated held-out volumes used for features and memorisation
    train_features: np.ndarray  # (N, D) of index.images
    index: TrainingIndex
    real_consistency: dict[str, float]
    noise_floor: dict[str, float]
    diversity_slices: list[tuple[int, int]]  # (held-out case, slice) of the masks sampled for diversity

    @property
    def diversity_masks(self) -> np.ndarray:
        return np.stack([self.heldout_masks[case][z] for case, z in self.diversity_slices])

    @property
    def diversity_images(self) -> np.ndarray:
        return np.stack([self.heldout_images[case][z] for case, z in self.diversity_slices])


@dataclass
class QualityResult:
    row: dict[str, Any]  # one flat CSV row
    pairs: pd.DataFrame  # closest pairs: set_index (into `images`), train_index (into reference.index.images)
    images: np.ndarray  # (M, H, W) the slices of the set that were scored (features, memorisation)
    masks: np.ndarray  # (M, H, W) their masks
    intensity: pd.DataFrame  # intensity_stats of the whole set
    style_samples: np.ndarray | None  # (n_styles, K, H, W) of the diversity masks; None for real images


def build_reference(model: torch.nn.Module, heldout_cases: Sequence[CaseLike], train_cases: Sequence[CaseLike],
                    cfg: QualityConfig | None = None) -> QualityReference:
    """Everything on the real side: training features and nearest-neighbour index (capped at
    `cfg.n_images` slices), the segmenter's Dice on the real held-out volumes, the noise floor and the
    diversity masks. `model` is the segmenter trained on real data only (e.g. the real arm's best.pt)."""
    cfg = cfg or QualityConfig()
    rng = np.random.default_rng(cfg.seed)
    for role, cases in (("held-out", heldout_cases), ("training", train_cases)):
        if not cases or any(c.mask is None for c in cases):
            raise ValueError(f"build_reference: need at least one {role} case, every one with a mask")
    train = np.concatenate([c.image for c in train_cases]).astype(np.float32, copy=False)
    groups = np.concatenate([[c.patient_id] * len(c.image) for c in train_cases])
    keep = _subset(len(train), cfg.n_images, rng)
    index = index_training_set(train[keep], groups[keep], cfg.memorisation_size)
    train_features = segmenter_features(model, index.images, cfg.batch_size, progress=cfg.progress)
    heldout_images = [np.array(c.image, np.float32) for c in heldout_cases]  # copies: torch wraps no read-only
    heldout_masks = [np.array(c.mask, np.uint8) for c in heldout_cases]  # memory map (data.cache)
    set_indices = _subset(sum(len(m) for m in heldout_masks), cfg.n_images, rng)
    return QualityReference(
        model=model, cfg=cfg, heldout_images=heldout_images, heldout_masks=heldout_masks, set_indices=set_indices,
        train_features=train_features, index=index,
        real_consistency=segmentation_consistency(model, heldout_images, heldout_masks, cfg.batch_size),
        noise_floor=_noise_floor(train_features, index.groups, len(set_indices), cfg, rng),
        diversity_slices=diversity_slices(heldout_masks, cfg.diversity_masks))


def _noise_floor(features: np.ndarray, groups: np.ndarray, set_size: int, cfg: QualityConfig,
                 rng: np.random.Generator) -> dict[str, float]:
    """FD and KID between two disjoint, random patient halves of the real training slices. The second half
    is subsampled to the size of the scored sets, so the floor carries their small-sample bias."""
    patients = rng.permutation(np.unique(groups))
    in_first = np.isin(groups, patients[: len(patients) // 2])
    first, second = features[in_first], features[~in_first]
    second = second[_subset(len(second), set_size, rng)]
    kid_mean, kid_sd = kernel_distance(first, second, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
    return {"fd_noise_floor": frechet_distance(first, second), "kid_noise_floor_mean": kid_mean,
            "kid_noise_floor_sd": kid_sd}


def diversity_slices(masks_by_case: Sequence[np.ndarray], n: int) -> list[tuple[int, int]]:
    """(case, slice) of the slice with the most heart of each case, for up to `n` cases spread over the list."""
    cases = np.unique(np.linspace(0, len(masks_by_case) - 1, min(n, len(masks_by_case))).round().astype(int))
    return [(int(c), int(np.argmax((masks_by_case[c] > 0).sum(axis=(1, 2))))) for c in cases]


def reference_row(reference: QualityReference) -> QualityResult:
    """The real held-out images scored like a generator's output (`generator` = "real"): what a perfect
    generator would get at the same set sizes. No style seeds here, so of diversity only
    `diversity_between_l1` (between the real images of the diversity masks)."""
    ref = reference
    real = ref.diversity_images
    styles = {"diversity_l1": np.nan, "diversity_one_minus_ssim": np.nan,
              "diversity_between_l1": between_l1_distance(real[None]), "diversity_ratio": np.nan,
              "diversity_heart_l1": np.nan, "diversity_heart_ratio": np.nan}
    return _score_set(ref, "real", ref.heldout_images, styles, ref.real_consistency)


def evaluate_generator(generator: Sampler, reference: QualityReference, name: str = "") -> QualityResult:
    """The whole quality row of one generator: it synthesises one volume (one style seed, cfg.seed + i) per
    held-out mask volume, then every metric compares those images with the real side of `reference`."""
    ref, cfg = reference, reference.cfg
    volumes = [np.asarray(generator.sample(mask, seed=cfg.seed + i, context=image), np.float32)
               for i, (mask, image) in enumerate(tqdm(list(zip(ref.heldout_masks, ref.heldout_images)), desc=f"synthesise {name}", leave=False,
                                             disable=not cfg.progress, mininterval=2.0))]
    for i, (volume, mask) in enumerate(zip(volumes, ref.heldout_masks)):
        if volume.shape != mask.shape:
            raise ValueError(f"generator {name!r}: returned shape {volume.shape} for masks {mask.shape} (case {i})")
    styles = diversity(generator, ref.diversity_masks, cfg.n_styles, cfg.seed, context=ref.diversity_images)
    return _score_set(ref, name or getattr(generator, "name", "") or type(generator).__name__, volumes, styles)


def _score_set(ref: QualityReference, name: str, volumes: list[np.ndarray], styles: dict[str, Any],
               consistency: dict[str, float] | None = None) -> QualityResult:
    """One row: the same code for a generator's volumes and for the real held-out ones."""
    cfg = ref.cfg
    consistency = consistency or segmentation_consistency(ref.model, volumes, ref.heldout_masks, cfg.batch_size)
    all_images, all_masks = np.concatenate(volumes), np.concatenate(ref.heldout_masks)
    images, masks = all_images[ref.set_indices], all_masks[ref.set_indices]
    features = segmenter_features(ref.model, images, cfg.batch_size, progress=cfg.progress)
    kid_mean, kid_sd = kernel_distance(ref.train_features, features, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
    mem = memorisation(images, ref.index, flag_fraction=cfg.memorisation_flag_fraction, n_pairs=cfg.n_pairs,
                       min_ssim=cfg.memorisation_min_ssim)
    intensity = intensity_stats(all_images, all_masks)
    row: dict[str, Any] = {"generator": name, "n_volumes": len(volumes), "n_slices": len(images),
                           "n_train_slices": len(ref.index.images), "feature_dim": features.shape[1]}
    row.update({f"consistency_dice_{k}": v for k, v in consistency.items()})
    row.update({f"consistency_dice_real_{k}": v for k, v in ref.real_consistency.items()})
    row["consistency_gap"] = ref.real_consistency["mean"] - consistency["mean"]
    row.update({"fd": frechet_distance(ref.train_features, features), "kid_mean": kid_mean, "kid_sd": kid_sd})
    row.update(ref.noise_floor)
    row.update(mem.summary(ref.index))
    row.update({k: v for k, v in styles.items() if k != "samples"})
    for r in intensity.itertuples():
        row[f"intensity_{r.structure}_mean"], row[f"intensity_{r.structure}_sd"] = r.mean, r.sd
    return QualityResult(row=row, pairs=mem.pairs, images=images, masks=masks, intensity=intensity,
                         style_samples=styles.get("samples"))


# ------------------------------------------------------------------------------------------- figures


def save_pairs_grid(path: Path | str, synthetic: np.ndarray, real: np.ndarray, pairs: pd.DataFrame,
                    title: str = "") -> Path:
    """PNG: one column per pair (closest first); top the synthetic slice, below its nearest real training
    slice, both on the same [0, 1] scale, with the normalised-L2 distance and SSIM of the pair."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    n = max(len(pairs), 1)
    fig = Figure(figsize=(1.7 * n, 3.8 + (0.3 if title else 0)), dpi=100)
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    for col, pair in enumerate(pairs.itertuples()):
        axes[0, col].imshow(synthetic[pair.set_index], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[1, col].imshow(real[pair.train_index], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[1, col].set_xlabel(f"d {pair.distance:.3f}\nSSIM {pair.ssim:.3f}", fontsize=7)
    axes[0, 0].set_ylabel("synthetic", fontsize=8)
    axes[1, 0].set_ylabel("nearest real", fontsize=8)
    return save_image_grid(fig, axes, path, title, bottom=0.12)


# ----------------------------------------------------------------------------------------- helpers


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"{what}: expected slices (N, H, W), got shape {images.shape}")
    if not np.isfinite(images).all():
        raise ValueError(f"{what}: contain NaN or Inf")
    return images


def _feature_pair(a: np.ndarray, b: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features: expected two (N, D) arrays with the same D, got {a.shape} and {b.shape}")
    if len(a) < minimum or len(b) < minimum:
        raise ValueError(f"features: need at least {minimum} rows per set, got {len(a)} and {len(b)}")
    return a, b


def _subset(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """All of range(n), or a sorted random `cap` of them."""
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, cap, replace=False))
