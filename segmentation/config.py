"""Typed settings of the segmentation stage. Validation of values happens in `pipeline.config`, in one place.

Training length is counted in optimisation steps, never epochs: the three arms (real, real+synthetic,
synthetic) have data sets of different sizes, and only a fixed number of steps x batch size gives every
arm the same compute.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from segmentation.augmentation import STRONG

AUGMENTATIONS = ("standard", "strong")  # segmentation.augmentation; experiment.augmentations sweeps them


@dataclass
class SegmentationConfig:
    # --- network -------------------------------------------------------------------------------------
    network: str = field(default="unet", metadata={"choices": ["unet", "dynunet"],
                         "help": "MONAI 2D network: UNet (residual units) or DynUNet (nnU-Net style)"})
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256], metadata={
        "min": 1, "min_len": 2, "help": "feature channels per resolution level, first to deepest"})
    strides: list[int] = field(default_factory=lambda: [2, 2, 2, 2], metadata={
        "min": 1, "max": 4, "min_len": 1, "unique": False,
        "help": "down-sampling stride between levels; one fewer than channels"})
    num_res_units: int = field(default=2, metadata={"min": 0, "max": 8,
                               "help": "residual units per block (UNet); DynUNet uses residual blocks when > 0"})
    dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 0.9, "help": "dropout probability"})

    # --- optimisation --------------------------------------------------------------------------------
    batch_size: int = field(default=16, metadata={
        "min": 1, "max": 4096,
        "help": "2D slices per optimisation step: the global batch, split equally over the processes of a "
                "torchrun (DDP) run"})
    steps: int = field(default=2000, metadata={"min": 1, "help": "total optimisation steps (the same for every arm)"})
    lr: float = field(default=1e-3, metadata={"min": 0.0, "max": 1.0, "help": "peak learning rate"})
    weight_decay: float = field(default=1e-5, metadata={"min": 0.0, "max": 1.0, "help": "weight decay"})
    optimizer: str = field(default="adamw", metadata={"choices": ["adam", "adamw"], "help": "optimiser"})
    schedule: str = field(default="cosine", metadata={"choices": ["cosine", "poly", "constant"],
                          "help": "learning-rate schedule over `steps` (poly: nnU-Net's (1 - t)^0.9)"})
    val_every: int = field(default=200, metadata={"min": 1,
                           "help": "steps between validations (3D Dice on real validation patients) and "
                                   "checkpoints; the last step is always validated"})

    # --- data ----------------------------------------------------------------------------------------
    synthetic_ratio: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0, "synthetic_only": True,
                                   "help": "expected fraction of each batch drawn from the synthetic set in "
                                           "the real+synthetic arm"})
    synthetic_schedule: str = field(default="constant", metadata={
        "choices": ["constant", "linear_decay"], "synthetic_only": True, "keyed_unless_default": True,
        "help": "how the synthetic share moves over training: constant = synthetic_ratio at every step; "
                "linear_decay = synthetic_ratio at step 0 falling linearly to 0 at the last step (synthetic "
                "shapes early, real appearance last; half the synthetic samples of constant). Measured on ACDC, "
                "10 patients x 5 draws, GMM, strong augmentation: -0.2 validation Dice points vs constant (from "
                "0.5), -0.8 from 1.0 (the constant 0.5's synthetic exposure)"})
    synthetic_filter: float = field(default=0.0, metadata={
        "min": 0.0, "max": 0.9, "synthetic_only": True, "keyed_unless_default": True,
        "help": "share of the synthetic slices dropped before training: those on which the real arm's segmenter "
                "of the same patients, seed and augmentation (the judge; needs the real arm in experiment.arms) "
                "agrees least with their mask (2D Dice); each dropped slice is listed in the segmenter's "
                "synthetic_filter.csv. 0 = keep all. Measured on ACDC, 10 patients x 5 draws, strong augmentation, "
                "share 0.2, 0.25 dropped: +0.7 validation / +0.5 test Dice points for the GMM, +0.2 / +0.2 for SPADE; "
                "neither passes warp [strong]"})
    drop_empty_prob: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0,
                                   "help": "training slices whose mask is empty are drawn this much less often "
                                           "(1 = never); validation and test always use every slice"})
    num_workers: int = field(default=0, metadata={"role": "runtime", "min": 0, "max": 64,
                             "help": "DataLoader worker processes (0 = load in the training process)"})

    # --- augmentation (MONAI dict transforms; training only) ------------------------------------------
    augment: bool = field(default=True, metadata={"help": "random spatial + intensity augmentation"})
    augmentation: str = field(default="standard", metadata={
        "choices": list(AUGMENTATIONS),
        "help": "standard: the affine_prob ... noise_std settings below; strong: nnU-Net v2's 2D augmentation "
                "(nnUNetTrainer.get_training_transforms; elastic from nnU-Net v1), adapted to [0, 1] images and a "
                "canonical orientation, never mirrored (segmentation/augmentation.py says where each value comes "
                f"from): {STRONG.summary()}. Of the settings below, strong uses flip_prob only"})
    affine_prob: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0,
                               "help": "probability of a random affine (rotation, scale, translation)"})
    rotate_deg: float = field(default=15.0, metadata={"min": 0.0, "max": 180.0, "help": "max in-plane rotation"})
    scale: float = field(default=0.1, metadata={"min": 0.0, "max": 0.9, "help": "max relative zoom in/out"})
    translate_px: float = field(default=8.0, metadata={"min": 0.0, "help": "max translation (pixels)"})
    flip_prob: float = field(default=0.0, metadata={
        "min": 0.0, "max": 1.0,
        "help": "probability of flipping both in-plane axes together (= a 180 degree rotation, which keeps the "
                "heart's handedness). Single-axis (left-right) flips are never used: they mirror the heart and "
                "put the RV on the wrong side of the septum. Off by default: canonical orientation is fixed"})
    intensity_prob: float = field(default=0.3, metadata={"min": 0.0, "max": 1.0,
                                  "help": "probability of each intensity transform (scale, shift, gamma, noise)"})
    intensity_scale: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0,
                                   "help": "random intensity scale factor range (1 +- this)"})
    intensity_shift: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0,
                                   "help": "random intensity offset range (+- this)"})
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.5], metadata={
        "len": 2, "min": 0.1, "max": 5.0, "help": "range of the random gamma (contrast) adjustment"})
    noise_std: float = field(default=0.02, metadata={"min": 0.0, "max": 1.0,
                             "help": "max standard deviation of additive Gaussian noise"})

    # --- runtime -------------------------------------------------------------------------------------
    device: str = field(default="auto", metadata={"role": "runtime", "choices": ["auto", "cpu", "cuda"],
                        "help": "where to train and predict (auto: cuda when available)"})
    amp: str = field(default="none", metadata={
        "choices": ["none", "bf16", "fp16"],
        "help": "mixed-precision autocast of training and validation: bf16 (CPU: only where the CPU supports "
                "it natively) or fp16 (CUDA only, with gradient scaling; validation then runs in float32); off "
                "by default so that runs are bit-for-bit reproducible"})
    channels_last: bool = field(default=False, metadata={"role": "runtime",
        "help": "channels-last memory format for the network and batches (faster convolutions on tensor-core "
                "GPUs)"})
    compile: bool = field(default=False, metadata={"role": "runtime",
        "help": "torch.compile the training network (tried once at start-up; falls back to eager with a "
                "warning if it fails)"})
    pin_memory: str = field(default="auto", metadata={"role": "runtime",
        "choices": ["auto", "on", "off"],
        "help": "page-locked host memory for the training batches, so copies to the GPU overlap compute "
                "(auto: on when training on cuda)"})
    deterministic: bool = field(default=True, metadata={
        "help": "seed everything and use deterministic algorithms: the same seed gives the same numbers"})
