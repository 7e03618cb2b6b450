"""Typed settings of the synthesis stage. Validation of values happens in `pipeline.config`, in one place.

One section per generator. The learned generators share the training-loop settings of `TrainConfig`
(steps, batch size, EMA, sample grids, checkpoints, divergence guard), so `synthesis.spade.steps` and
`synthesis.cvae.steps` read the same way. Defaults are sized for a CPU and 128 x 128 slices (1.5 mm).
Training length is counted in optimisation steps, never epochs.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from synthesis.masks import MaskConfig

DIFFAUGMENT_OPS = ("color", "translation", "cutout")


@dataclass
class GeneratorConfig:
    """Base of every generator's section (the registry's `config_class`)."""

    tissue_classes: int = field(default=0, metadata={
        "choices": [0, 2, 3, 4, 5, 6, 8],
        "help": "condition on the torso too: K intensity classes of the background (1-D k-means of the training "
                "slices' background, `synthesis.tissue`) label the real slice each mask comes from; 0 = the heart "
                "mask only. Needs mask sources with a real slice (real, deformed), not `sampled`"})
    tissue_smooth_px: float = field(default=1.0, metadata={
        "min": 0.0, "max": 10.0, "help": "Gaussian smoothing (pixels) of a slice before its background is classed"})

    def context_settings(self) -> list[str]:
        """The settings, as set here, that need the real slice behind each mask (`sample`'s context); an empty
        name: the generator needs it whatever its settings."""
        return ["tissue_classes"] if self.tissue_classes else []

    def size_divisor(self) -> int:
        """What image sides must be divisible by for this generator's networks (1: any size)."""
        return 1


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


@dataclass
class WarpConfig(GeneratorConfig):
    """Deformation only: the real slice under its mask draw's warp, nothing painted (needs mask sources real/deformed).

    The arm that tells what deformation alone brings; it has no settings of its own (`synthesis.masks` decides the
    warps, as for every generator)."""

    tissue_classes: int = field(default=0, metadata={
        "choices": [0], "help": "always 0: warp paints nothing, so it has no torso classes to condition on"})
    tissue_smooth_px: float = field(default=1.0, metadata={"min": 0.0, "max": 10.0, "help": "unused by warp"})

    def context_settings(self) -> list[str]:
        return [""]  # what it returns IS the real slice


@dataclass
class TrainConfig(GeneratorConfig):
    """The shared training loop (`synthesis.train.fit_loop`)."""

    steps: int = field(default=5000, metadata={"role": "resumable", "min": 1, "help": "optimisation steps"})
    batch_size: int = field(default=16, metadata={"min": 1, "max": 4096,
                            "help": "slices per step: the global batch, split equally over the processes of a "
                                    "torchrun (DDP) run"})
    ema_decay: float = field(default=0.999, metadata={"min": 0.0, "max": 1.0,
                             "help": "decay of the exponential moving average of the generator weights used for "
                                     "sampling (warmed up as min(decay, (1 + n) / (10 + n)))"})
    sample_every: int = field(default=250, metadata={"role": "runtime", "min": 1,
                              "help": "steps between sample grids (out_dir/samples/step_XXXXXX.png)"})
    checkpoint_every: int = field(default=500, metadata={"role": "runtime", "min": 1,
                                  "help": "steps between checkpoints (the last step is always saved)"})
    grid_masks: int = field(default=6, metadata={"role": "runtime", "min": 1, "max": 32,
                            "help": "columns (fixed masks) of a grid"})
    grid_styles: int = field(default=3, metadata={"role": "runtime", "min": 1, "max": 8,
                             "help": "sample rows (style seeds) of a grid"})
    collapse_patience: int = field(default=500, metadata={"role": "resumable", "min": 0,
                                   "help": "stop when the discriminator wins completely for this many consecutive "
                                           "steps (0 = never)"})
    collapse_d_eps: float = field(default=0.01, metadata={"role": "resumable", "min": 0.0,
                                  "help": "discriminator loss below this counts as 'D wins completely'"})
    collapse_g_adv: float = field(default=1.0, metadata={"role": "resumable", "min": 0.0,
                                  "help": "... together with a generator adversarial loss above this"})
    amp: str = field(default="none", metadata={
        "choices": ["none", "bf16", "fp16"],
        "help": "mixed-precision autocast of the forward passes: bf16 (CPU: only where the CPU supports it "
                "natively) or fp16 (CUDA only, with gradient scaling)"})
    channels_last: bool = field(default=False, metadata={"role": "runtime",
        "help": "channels-last memory format for the networks and batches (faster convolutions on tensor-core "
                "GPUs)"})
    compile: bool = field(default=False, metadata={"role": "runtime",
        "help": "torch.compile the generator and discriminator forward passes (tried once at start-up; falls "
                "back to eager with a warning if it fails)"})
    device: str = field(default="auto", metadata={"role": "runtime", "choices": ["auto", "cpu", "cuda"],
                        "help": "auto = cuda when available, else cpu; the training slices are moved to the "
                                "device once, so no loader workers or pinned memory are needed"})
    progress: bool = field(default=True, metadata={"role": "runtime", "help": "tqdm progress bar"})


@dataclass
class AdversarialConfig(TrainConfig):
    """Discriminator and GAN losses shared by `spade` and `pix2pix`."""

    lr_g: float = field(default=1e-4, metadata={"min": 0.0, "max": 1.0, "help": "generator learning rate (Adam)"})
    lr_d: float = field(default=4e-4, metadata={"min": 0.0, "max": 1.0,
                        "help": "discriminator learning rate (two time-scale update rule)"})
    betas: list[float] = field(default_factory=lambda: [0.0, 0.999], metadata={
        "len": 2, "min": 0.0, "max": 0.9999, "help": "Adam betas of both optimisers"})
    adversarial_loss: str = field(default="hinge", metadata={
        "choices": ["hinge", "least_squares"],
        "help": "hinge: max(0, 1 -/+ D) on raw logits (SPADE); least_squares: MONAI PatchAdversarialLoss"})
    d_channels: int = field(default=32, metadata={"min": 1, "max": 1024,
                            "help": "filters of the discriminator's first layer (doubled per layer)"})
    d_layers: int = field(default=3, metadata={"min": 1, "max": 6,
                          "help": "strided layers of the PatchGAN discriminator"})
    d_scales: int = field(default=1, metadata={"min": 1, "max": 4,
                          "help": "discriminators (MultiScalePatchDiscriminator when > 1; needs >= 256 px)"})
    d_norm: str = field(default="instance", metadata={"choices": ["instance", "batch", "none"],
                        "help": "normalisation in the discriminator"})
    spectral_norm: bool = field(default=True, metadata={"help": "spectral normalisation of every D convolution"})
    lambda_fm: float = field(default=10.0, metadata={"min": 0.0,
                             "help": "weight of discriminator feature matching (L1 between D features)"})
    r1_gamma: float = field(default=0.0, metadata={"min": 0.0,
                            "help": "R1 gradient penalty on real images (0 = off)"})
    r1_every: int = field(default=16, metadata={"min": 1, "help": "lazy R1: applied every this many steps"})
    diffaugment: str = field(default="translation,cutout", metadata={
        "help": f"comma-separated DiffAugment ops from {list(DIFFAUGMENT_OPS)} applied to real and fake before "
                f"D ('' = none)"})


@dataclass
class SpadeConfig(AdversarialConfig):
    """MONAI SPADE decoder (+ style encoder when is_vae) with a PatchGAN discriminator."""

    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128], metadata={
        "min": 1, "min_len": 1, "unique": False,
        "help": "encoder channels, finest to coarsest (the decoder mirrors them); sides must be divisible "
                "by 2**len(channels)"})
    spade_hidden: int = field(default=32, metadata={"min": 1, "max": 1024,
                              "help": "hidden channels of each SPADE normalisation block"})
    head_channels: int = field(default=16, metadata={"min": 1, "max": 256,
                               "help": "feature channels at full resolution before the 1-channel output conv"})
    upsampling: str = field(default="bilinear", metadata={
        "choices": ["nearest", "bilinear"],
        "help": "decoder upsampling; nearest (SPADE's) leaves blocks of the coarse latent visible in the background"})
    z_dim: int = field(default=32, metadata={"min": 1, "max": 1024, "help": "style code size"})
    is_vae: bool = field(default=True, metadata={
        "help": "encode the real image's style (VAE-GAN, KL + L1); false = plain GAN fed with noise z"})
    lambda_kl: float = field(default=0.05, metadata={"min": 0.0, "help": "weight of the KL term (is_vae)"})
    lambda_l1: float = field(default=1.0, metadata={"min": 0.0,
                             "help": "weight of L1 between the image and its reconstruction from its own style "
                                     "code (is_vae only)"})

    def size_divisor(self) -> int:
        return 2 ** len(self.channels)


@dataclass
class Pix2PixConfig(AdversarialConfig):
    """MONAI BasicUNet generator with decoder dropout (kept on, per seed, at sampling time) and a PatchGAN
    discriminator."""

    lr_g: float = field(default=2e-4, metadata={"min": 0.0, "max": 1.0, "help": "generator learning rate (Adam)"})
    lr_d: float = field(default=2e-4, metadata={"min": 0.0, "max": 1.0, "help": "discriminator learning rate"})
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999], metadata={
        "len": 2, "min": 0.0, "max": 0.9999, "help": "Adam betas of both optimisers"})
    lambda_fm: float = field(default=10.0, metadata={"min": 0.0,
                             "help": "weight of discriminator feature matching (pix2pixHD): a gradient that stays "
                                     "informative when D wins"})
    features: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256, 16], metadata={
        "len": 6, "min": 1,
        "help": "MONAI BasicUNet features: 5 levels (sides must be divisible by 16) and the last decoder block"})
    dropout: float = field(default=0.2, metadata={"min": 0.0, "max": 0.9,
                           "help": "dropout of the three coarser decoder blocks; also applied at sampling time, with one mask "
                                   "per seed shared by all slices, so that seeds give different images"})
    lambda_l1: float = field(default=100.0, metadata={"min": 0.0, "help": "weight of L1 to the real image"})

    def size_divisor(self) -> int:
        return 16  # BasicUNet: four 2x poolings


@dataclass
class CVAEConfig(TrainConfig):
    """Conditional VAE: q(z | image, mask) by a conv encoder, p(image | z, mask) by a SPADE decoder."""

    lr: float = field(default=2e-4, metadata={"min": 0.0, "max": 1.0, "help": "learning rate (Adam)"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={
        "len": 2, "min": 0.0, "max": 0.9999, "help": "Adam betas"})
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128], metadata={
        "min": 1, "min_len": 1, "unique": False,
        "help": "encoder channels, finest to coarsest (the decoder mirrors them); sides must be divisible "
                "by 2**len(channels)"})
    spade_hidden: int = field(default=32, metadata={"min": 1, "max": 1024,
                              "help": "hidden channels of each SPADE normalisation block of the decoder"})
    head_channels: int = field(default=16, metadata={"min": 1, "max": 256,
                               "help": "feature channels at full resolution before the 1-channel output conv"})
    upsampling: str = field(default="bilinear", metadata={
        "choices": ["nearest", "bilinear"],
        "help": "decoder upsampling; nearest (SPADE's) leaves blocks of the coarse latent visible in the background"})
    z_dim: int = field(default=16, metadata={"min": 1, "max": 1024, "help": "latent size"})
    lambda_kl: float = field(default=0.01, metadata={"min": 0.0,
                             "help": "beta: weight of KL (summed over z, mean over the batch) against the "
                                     "per-pixel mean reconstruction loss"})
    kl_warmup_steps: int = field(default=500, metadata={"min": 0,
                                 "help": "steps over which the KL weight ramps linearly from 0 (0 = none)"})
    reconstruction: str = field(default="l1", metadata={"choices": ["l1", "l2"], "help": "reconstruction loss"})

    def size_divisor(self) -> int:
        return 2 ** len(self.channels)



@dataclass
class DiffusionConfig(TrainConfig):
    """Mask-conditioned diffusion: MONAI SPADEDiffusionModelUNet, DDPM training, DDIM sampling."""

    lr: float = field(default=2e-4, metadata={"min": 0.0, "max": 1.0, "help": "learning rate (Adam)"})
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 64], metadata={
        "min": 1, "min_len": 1, "unique": False,
        "help": "U-Net channels per level, finest to coarsest (group norm: min(32, their gcd) groups); sides must be "
                "divisible by 2**(len(channels) - 1). Training at 128 px, batch 8, on one (shared) CPU thread: "
                "~2.9 samples/s with the default, ~0.8 with [32, 64, 64]"})
    num_res_blocks: int = field(default=1, metadata={"min": 1, "max": 4,
                                "help": "residual blocks per level on the way down (one more on the way up)"})
    attention_lowest: bool = field(default=False, metadata={
        "help": "self-attention in the blocks of the coarsest level too (MONAI's middle block always has it)"})
    spade_hidden: int = field(default=16, metadata={"min": 1, "max": 1024,
                              "help": "hidden channels of each SPADE normalisation block (the mask enters there)"})
    schedule: str = field(default="linear_beta", metadata={
        "choices": ["linear_beta", "scaled_linear_beta", "cosine"],
        "help": "noise schedule of the 1000 training timesteps (MONAI's names; linear_beta = DDPM's 1e-4..0.02)"})
    prediction_type: str = field(default="v_prediction", metadata={
        "choices": ["epsilon", "v_prediction"],
        "help": "what the network predicts: v (Salimans & Ho 2022) or the noise; on toy slices v got the label "
                "intensities right in 600 steps where epsilon was still off by 0.3 in the background"})
    sample_steps: int = field(default=50, metadata={
        "role": "resumable", "min": 1, "max": 50,
        "help": "DDIM steps (deterministic, eta 0) when sampling; training is unaffected"})
    background: str = field(default="generated", metadata={
        "role": "resumable", "choices": ["generated", "real"],
        "help": "generated: the whole slice is sampled; real: background-preserving (inpainting) mode, the real slice "
                "behind the mask is kept outside the heart dilated by inpaint_margin_px and re-imposed, noised to "
                "the current level, at every denoising step (RePaint-style), needs mask sources real/deformed"})
    inpaint_margin_px: float = field(default=6.0, metadata={
        "role": "resumable", "min": 0.0, "max": 64.0,
        "help": "background: real: the region sampled is the heart and every pixel within this distance of it"})
    blend_px: float = field(default=3.0, metadata={
        "role": "resumable", "min": 0.0, "max": 64.0,
        "help": "background: real: the sampled region fades into the real slice over this many pixels inside its "
                "edge (0 = a hard edge); outside the region the image is the real slice exactly"})

    def context_settings(self) -> list[str]:
        return super().context_settings() + (["background"] if self.background == "real" else [])

    def size_divisor(self) -> int:
        return 2 ** (len(self.channels) - 1)  # the coarsest level is not downsampled


@dataclass
class QualityConfig:
    """Settings of the quality metrics. Defaults sized for a CPU: on ACDC at 128 px (1330 training slices,
    182 held-out slices), `build_reference` takes ~8 s and `evaluate_generator` ~4 s per generator (gmm) on
    2 cores."""

    enabled: bool = field(default=True, metadata={
        "help": "run the quality stage (needs the real arm: its segmenter is the judge)"})
    n_images: int = field(default=2000, metadata={
        "min": 10, "help": "cap on the slices per set (real training, held-out, synthetic) used for features "
                           "and memorisation; a seeded random subset above it"})
    batch_size: int = field(default=32, metadata={"min": 1, "max": 4096,
                            "help": "slices per forward pass of the segmenter"})
    kid_subsets: int = field(default=50, metadata={"min": 1, "help": "random subsets averaged by KID"})
    kid_subset_size: int = field(default=100, metadata={
        "min": 2, "help": "slices per KID subset (lowered to the smaller set's size when needed)"})
    memorisation_size: int = field(default=64, metadata={
        "min": 8, "max": 1024, "help": "side (pixels) slices are area-downsampled to for the nearest-neighbour "
                                       "search (SSIM of the found pairs is at full resolution)"})
    memorisation_flag_fraction: float = field(default=0.05, metadata={
        "min": 0.0, "max": 1.0, "help": "flag a set as memorising when more than this fraction of its slices "
                                        "is closer to a training slice than any two real patients' slices are"})
    memorisation_min_ssim: float = field(default=0.5, metadata={
        "min": 0.0, "max": 1.0, "help": "a slice counts as a copy only if its pair's SSIM is also above this (and "
                                        "above every real-real pair's): near-copies score >= 0.9"})
    n_pairs: int = field(default=8, metadata={"min": 1, "max": 64,
                         "help": "closest synthetic-training pairs kept for the report grid"})
    diversity_masks: int = field(default=16, metadata={
        "min": 2, "help": "held-out masks (the slice with most heart of each case) sampled for diversity"})
    n_styles: int = field(default=4, metadata={"min": 2, "max": 64,
                          "help": "style seeds per mask for diversity"})
    seed: int = field(default=0, metadata={"help": "seed of subsets, patient halves and the styles sampled"})
    progress: bool = field(default=True, metadata={"role": "runtime", "help": "tqdm progress bars"})


@dataclass
class SynthesisConfig:
    """The synthesis stage: generator sections plus what the synthetic data set is drawn from."""

    seed: int = field(default=0, metadata={"help": "seed of generator training, mask draws and styles"})
    n_volumes: int = field(default=20, metadata={"min": 0, "help": "synthetic volumes per generator"})
    masks: MaskConfig = field(default_factory=MaskConfig)
    gmm: GMMConfig = field(default_factory=GMMConfig)
    warp: WarpConfig = field(default_factory=WarpConfig)
    spade: SpadeConfig = field(default_factory=SpadeConfig)
    pix2pix: Pix2PixConfig = field(default_factory=Pix2PixConfig)
    cvae: CVAEConfig = field(default_factory=CVAEConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def generator_config(self, name: str) -> GeneratorConfig:
        if name not in GENERATOR_SECTIONS:
            raise ValueError(f"synthesis: no config section for generator {name!r}; "
                             f"sections: {sorted(GENERATOR_SECTIONS)}")
        return getattr(self, name)

    def size_divisor(self, name: str) -> int:
        """What image sides must be divisible by for generator `name`."""
        return self.generator_config(name).size_divisor()


def config_from_dict(cls: type, values: dict[str, Any]):
    """Rebuild a section saved with `dataclasses.asdict`; unknown keys are an error naming the key."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key {unknown[0]!r}; allowed: {sorted(names)}")
    return cls(**values)


def parse_diffaugment(policy: str) -> tuple[str, ...]:
    ops = tuple(op.strip() for op in policy.split(",") if op.strip())
    bad = [op for op in ops if op not in DIFFAUGMENT_OPS]
    if bad:
        raise ValueError(f"diffaugment: unknown op {bad[0]!r}; choose from {list(DIFFAUGMENT_OPS)}")
    return ops


# Generator name -> its section's class: every field of SynthesisConfig holding a generator's settings.
GENERATOR_SECTIONS: dict[str, type[GeneratorConfig]] = {
    name: hint for name, hint in typing.get_type_hints(SynthesisConfig).items()
    if isinstance(hint, type) and issubclass(hint, GeneratorConfig)}
