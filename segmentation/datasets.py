"""The training sample stream of one arm: which 2D slices each optimisation step sees, and how they are augmented.

One function, `make_train_stream`, builds the stream for every arm, so the arms differ only in the data:

- `real`: every sample from the real training slices;
- `synthetic`: every sample from the synthetic slices;
- `real+synthetic`: each batch holds `floor(r * B)` synthetic samples plus one more with probability
  `r * B - floor(r * B)` (r = `synthetic_ratio`, B = batch size), the rest real. The expected synthetic
  fraction is exactly r whatever the batch size, and the two sources never compete for "epochs": the
  smaller set is simply revisited more often. With `synthetic_schedule: linear_decay`, r falls linearly from
  `synthetic_ratio` at the first step to 0 at the last.

Within a source, slices are drawn with replacement, uniformly except that slices with an empty mask get
weight `1 - drop_empty_prob`. There are no epochs: batch `step` is a pure function of `(seed, step)`
(`TrainStream.plan`), including one augmentation seed per sample. A training run killed at any step
therefore resumes with exactly the batches it would have seen, whatever the number of worker processes; and
under distributed training (`loader(rank=, world_size=)`) each process takes its contiguous share of every
batch, sample for sample identical to the same positions of a single-process run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from monai.transforms import (Compose, EnsureTyped, RandAdjustContrastd, RandAffined, RandGaussianNoised,
                              Randomizable, RandScaleIntensityd, RandShiftIntensityd)
from torch.utils.data import DataLoader, Dataset, Sampler

from data.types import DataError, PreparedCase
from segmentation.augmentation import KEYS, SPATIAL_MODES, both_axes_flip, strong_transforms
from segmentation.config import SegmentationConfig
from segmentation.runtime import torch_threads, without_meta

ARMS = ("real", "real+synthetic", "synthetic")
SOURCES = ("real", "synthetic")  # index = the `source` value of a sample
REAL, SYNTHETIC = 0, 1

SampleKey = tuple[int, int, int]  # (source, slice index in that source, augmentation seed of this sample)


@dataclass
class SlicePool:
    """The 2D training slices of one source, as positions in their cases' arrays, with sampling probabilities.

    Nothing is stacked: the arrays stay what `data.cache.prepare_cases` gives (memory-mapped from the store), so
    a slice is read from disk (or the shared page cache) when a batch draws it, and a cohort of any size costs
    no RAM up front. `slice(i)` returns in-memory copies with the dtypes of the old stacked pool (bit for bit).
    """

    images: list[np.ndarray]  # per case: (S, H, W), any float dtype (read as float32)
    masks: list[np.ndarray]  # per case: (S, H, W) labels (read as uint8)
    starts: np.ndarray  # (cases + 1,) pool index of each case's first slice; the last entry = len(pool)
    probs: np.ndarray  # (N,) float64, sums to 1
    case_ids: list[str]  # per slice, for inspection

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of every slice."""
        return tuple(self.images[0].shape[1:])  # type: ignore[return-value]

    def slice(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image float32, mask uint8), both (H, W) and in memory, of pool slice `index`."""
        case = int(np.searchsorted(self.starts, index, side="right")) - 1
        s = int(index) - int(self.starts[case])
        return (np.array(self.images[case][s], dtype=np.float32), np.array(self.masks[case][s], dtype=np.uint8))


def slice_pool(cases: Sequence[PreparedCase], drop_empty_prob: float = 0.0, *, what: str = "cases") -> SlicePool:
    """The slices of `cases` (read lazily); every case needs a mask and the same in-plane size."""
    if not cases:
        raise ValueError(f"{what}: no cases given")
    shape = cases[0].image.shape[1:]
    for case in cases:
        if case.mask is None:
            raise DataError(case.ref.image_path, f"{what}: case {case.case_id} has no mask; training needs one")
        if case.image.ndim != 3 or case.image.shape[1:] != shape or case.mask.shape != case.image.shape:
            raise DataError(case.ref.image_path, f"{what}: case {case.case_id} has image {case.image.shape} and "
                                                 f"mask {case.mask.shape}; expected (S, {shape[0]}, {shape[1]}) "
                                                 f"for both, like the first case")
    # One pass over the masks (case by case, so a memory-mapped cohort is never held whole) for the weights.
    foreground = np.concatenate([np.asarray(c.mask, dtype=np.uint8).reshape(len(c.mask), -1).any(axis=1)
                                 for c in cases])
    weights = np.where(foreground, 1.0, 1.0 - drop_empty_prob)
    if weights.sum() <= 0:  # every slice empty and all dropped: fall back to uniform rather than fail
        weights = np.ones(len(foreground))
    starts = np.concatenate([[0], np.cumsum([len(c.image) for c in cases])]).astype(np.int64)
    case_ids = [c.case_id for c in cases for _ in range(len(c.image))]
    return SlicePool(images=[c.image for c in cases], masks=[c.mask for c in cases], starts=starts,
                     probs=weights / weights.sum(), case_ids=case_ids)


def build_train_transforms(cfg: SegmentationConfig, spatial_size: tuple[int, int]) -> Compose | None:
    """MONAI dict transforms on {"image", "label"} (1, H, W) arrays; None when augmentation is off.

    Labels move with the image through the same spatial transforms (nearest neighbour); intensity transforms
    touch the image only. `standard`: one random affine, a both-axes flip and light intensity changes, set by
    the segmentation config; `strong`: nnU-Net's augmentation (`segmentation.augmentation`).
    """
    if not cfg.augment:
        return None
    if cfg.augmentation == "strong":
        transforms = strong_transforms(spatial_size, cfg.flip_prob)
    else:
        transforms = [
            RandAffined(keys=KEYS, prob=cfg.affine_prob, rotate_range=(math.radians(cfg.rotate_deg),),
                        scale_range=(cfg.scale, cfg.scale), translate_range=(cfg.translate_px, cfg.translate_px),
                        mode=SPATIAL_MODES, padding_mode="zeros", spatial_size=spatial_size, cache_grid=True),
            both_axes_flip(cfg.flip_prob),
            RandAdjustContrastd(keys="image", prob=cfg.intensity_prob, gamma=tuple(cfg.gamma)),
            RandScaleIntensityd(keys="image", prob=cfg.intensity_prob, factors=cfg.intensity_scale),
            RandShiftIntensityd(keys="image", prob=cfg.intensity_prob, offsets=cfg.intensity_shift),
            RandGaussianNoised(keys="image", prob=cfg.intensity_prob, mean=0.0, std=cfg.noise_std),
        ]
    return Compose([*transforms, EnsureTyped(keys=KEYS, data_type="tensor", track_meta=False)])


class TrainStream(Dataset):
    """Map-style dataset indexed by `SampleKey`s; `loader()` yields the batches of a range of steps."""

    def __init__(self, arm: str, pools: dict[int, SlicePool], cfg: SegmentationConfig, seed: int):
        self.arm, self.pools, self.cfg, self.seed = arm, pools, cfg, int(seed)
        self.batch_size = int(cfg.batch_size)
        self.spatial_size = next(iter(pools.values())).shape
        self.transforms = build_train_transforms(cfg, self.spatial_size)
        # Every random transform draws from this one generator, re-seeded per sample: a sample's augmentation
        # then depends on its own seed only (not on the samples before it in the batch), and re-seeding an
        # existing RandomState costs microseconds where MONAI's set_random_state(seed) builds a new one per
        # transform (~1 ms per sample).
        self.random_state = np.random.RandomState()
        if self.transforms is not None:
            for transform in self.transforms.transforms:
                if isinstance(transform, Randomizable):
                    transform.set_random_state(state=self.random_state)

    def synthetic_share(self, step: int) -> float:
        """The expected synthetic fraction of batch `step` in the real+synthetic arm (`synthetic_schedule`)."""
        if self.cfg.synthetic_schedule == "linear_decay":
            return self.cfg.synthetic_ratio * max(0.0, 1.0 - step / max(1, self.cfg.steps - 1))
        return self.cfg.synthetic_ratio

    def n_synthetic(self, rng: np.random.Generator, step: int = 0) -> int:
        """Synthetic samples in batch `step` (see module docstring)."""
        if self.arm == "real":
            return 0
        if self.arm == "synthetic":
            return self.batch_size
        expected = self.synthetic_share(step) * self.batch_size
        return min(self.batch_size, int(math.floor(expected)) + int(rng.random() < expected - math.floor(expected)))

    def plan(self, step: int) -> list[SampleKey]:
        """The samples of batch `step` (0-based): a pure function of (seed, step).

        Each key carries its own augmentation seed, so any share of the batch can be fetched on its own.
        """
        rng = np.random.default_rng([self.seed, int(step)])
        n_syn = self.n_synthetic(rng, step)
        keys: list[tuple[int, int]] = []
        for source, count in ((REAL, self.batch_size - n_syn), (SYNTHETIC, n_syn)):
            if count:
                pool = self.pools[source]
                keys += [(source, int(i)) for i in rng.choice(len(pool), size=count, p=pool.probs)]
        aug_seeds = rng.integers(0, 2**31 - 1, size=len(keys))
        return [(source, index, int(aug_seed)) for (source, index), aug_seed in zip(keys, aug_seeds)]

    def shard(self, step: int, rank: int = 0, world_size: int = 1) -> list[SampleKey]:
        """Rank `rank`'s contiguous share of `plan(step)` (batch_size must be divisible by world_size)."""
        share = self.batch_size // world_size
        return self.plan(step)[rank * share:(rank + 1) * share]

    def __len__(self) -> int:  # samples per step x steps; only for DataLoader's bookkeeping
        return self.batch_size * self.cfg.steps

    def __getitem__(self, key: SampleKey) -> dict[str, torch.Tensor | int]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[SampleKey]) -> list[dict[str, torch.Tensor | int]]:
        """One batch (DataLoader calls this with a whole `shard(step, ...)`)."""
        samples = []
        # Small per-slice ops: one thread (DataLoader workers have one anyway), plain tensors (no MONAI metadata).
        with torch_threads(1), without_meta():
            for source, index, aug_seed in keys:
                image, label = self.pools[source].slice(index)  # read from the store here, slice by slice
                sample = {"image": image[None], "label": label[None]}
                if self.transforms is not None:
                    self.random_state.seed(aug_seed)
                    sample = self.transforms(sample)
                    image, label = sample["image"].float(), sample["label"].round().to(torch.uint8)
                else:
                    image, label = torch.from_numpy(sample["image"]), torch.from_numpy(sample["label"])
                samples.append({"image": image, "label": label, "source": source})
        return samples

    def loader(self, start_step: int, stop_step: int, *, rank: int = 0, world_size: int = 1,
               pin_memory: bool = False) -> DataLoader:
        """This rank's shares of the batches of steps [start_step, stop_step); the own generator keeps
        torch's global RNG untouched."""
        if self.batch_size % world_size:
            raise ValueError(f"segmentation.batch_size = {self.batch_size} must be divisible by the number of "
                             f"training processes ({world_size})")
        return DataLoader(self, batch_sampler=_StepBatches(self, start_step, stop_step, rank, world_size),
                          num_workers=self.cfg.num_workers, pin_memory=pin_memory,
                          generator=torch.Generator().manual_seed(self.seed))


class _StepBatches(Sampler):
    def __init__(self, stream: TrainStream, start: int, stop: int, rank: int, world_size: int):
        self.stream, self.start, self.stop = stream, int(start), int(stop)
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield self.stream.shard(step, self.rank, self.world_size)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def make_train_stream(arm: str, real_cases: Sequence[PreparedCase] | None,
                      synthetic_cases: Sequence[PreparedCase] | None, cfg: SegmentationConfig,
                      seed: int) -> TrainStream:
    """The one place that turns an arm into training data; everything else is shared by all arms."""
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r}: expected one of {list(ARMS)}")
    pools: dict[int, SlicePool] = {}
    if arm in ("real", "real+synthetic"):
        if not real_cases:
            raise ValueError(f"arm {arm!r} needs real training cases; got none")
        pools[REAL] = slice_pool(real_cases, cfg.drop_empty_prob, what="real training cases")
    if arm in ("synthetic", "real+synthetic"):
        if not synthetic_cases:
            raise ValueError(f"arm {arm!r} needs synthetic_cases; got none")
        pools[SYNTHETIC] = slice_pool(synthetic_cases, cfg.drop_empty_prob, what="synthetic cases")
    if len(pools) == 2 and pools[REAL].shape != pools[SYNTHETIC].shape:
        raise ValueError(f"real slices are {pools[REAL].shape} but synthetic slices {pools[SYNTHETIC].shape}; both "
                         f"must come from the same preprocessing")
    return TrainStream(arm, pools, cfg, seed)
