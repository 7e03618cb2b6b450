"""Typed settings of the synthesis stage. Validation of values happens in `pipeline.config`, in one place.

The bases every generator's section builds on; each generator declares its own section (a subclass of
`GeneratorConfig`) in its module, beside its class, and `synthesis.generators.SynthesisConfig` gathers them.
The learned generators share the training-loop settings of `TrainConfig` (steps, batch size, EMA, sample grids,
checkpoints, divergence guard), so `synthesis.spade.steps` and `synthesis.cvae.steps` read the same way. Defaults are sized for a CPU and 128 x 128 slices (1.5 mm).
Training length is counted in optimisation steps, never epochs.
"""
from __future__ import annotations

import dataclasses
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
    background: str = field(default="generated", metadata={
        "choices": ["generated", "real"], "keyed_unless_default": True,
        "help": "generated: the whole slice is made from the mask; real: background-preserving (inpainting), the "
                "network also gets the real slice with the heart dilated by inpaint_margin_px blanked (and that "
                "region), paints the region, and the real slice is kept outside it (the discriminator sees the "
                "blended image); needs mask sources real/deformed"})
    inpaint_margin_px: float = field(default=6.0, metadata={
        "min": 0.0, "max": 64.0, "keyed_unless_default": True,
        "help": "background: real: the region painted is the heart and every pixel within this distance of it"})
    blend_px: float = field(default=3.0, metadata={
        "min": 0.0, "max": 64.0, "keyed_unless_default": True,
        "help": "background: real: the painted region fades into the real slice over this many pixels inside its "
                "edge (0 = a hard edge); outside the region the image is the real slice exactly"})

    crop_px: int = field(default=0, metadata={
        "min": 0, "max": 1024, "keyed_unless_default": True,
        "help": "background: real: train and paint on crop_px x crop_px windows centred on each slice's heart "
                "(its bounding box; training slices without heart are left out, and sampled ones are returned as "
                "their real slice) and paste the painted window back; 0 = whole slices. Cheaper on a CPU (96 px: "
                "~0.5x the cost of 128); must be divisible like the slices (see the generator's channels). At 1.5 "
                "mm, 96 px hold the heart and a 6-px margin in 97 % of ACDC's labelled slices; where the region "
                "reaches the window's edge it is painted up to one pixel inside it"})

    def context_settings(self) -> list[str]:
        return super().context_settings() + (["background"] if self.background == "real" else [])


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
class SynthesisSettings:
    """The synthesis stage's own settings. `synthesis.generators.SynthesisConfig` adds one section per registered
    generator (its `config_class`), so a generator's module is the only place that declares its settings."""

    seed: int = field(default=0, metadata={"help": "seed of generator training, mask draws and styles"})
    n_volumes: int = field(default=20, metadata={"min": 0, "help": "synthetic volumes per generator"})
    masks: MaskConfig = field(default_factory=MaskConfig)

    def generator_config(self, name: str) -> GeneratorConfig:
        section = getattr(self, name, None)
        if not isinstance(section, GeneratorConfig):
            sections = [f.name for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), GeneratorConfig)]
            raise ValueError(f"synthesis: no config section for generator {name!r}; sections: {sections}")
        return section

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
