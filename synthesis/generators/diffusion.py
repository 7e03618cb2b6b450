"""`diffusion`: a denoising diffusion model of image given mask, built from MONAI's parts.

Network: `monai.networks.nets.SPADEDiffusionModelUNet` (Wang et al., "Semantic image synthesis via diffusion
models", 2022; MONAI's 2d_spade_ldm tutorial, here in pixel space). The noisy image is its only input channel;
the condition map (one-hot heart labels, plus the tissue classes of `synthesis.tissue` when `tissue_classes` >
0) enters through the SPADE normalisation of every decoder block (`label_nc` = `n_labels`). Group norm uses
min(32, gcd(channels)) groups; attention heads have gcd(channels[-1], 32) channels.

Training (`train_step`, run by `synthesis.train.fit_loop`: checkpoints, EMA, resumption, DDP and grids as for
`spade`/`cvae`): a `DDPMScheduler` with 1000 timesteps, `DiffusionInferer` noising the image at a uniform random
timestep, MSE between the network's output and v (`prediction_type: v_prediction`, the default) or the noise
(`epsilon`). Noise and timesteps come from `Batch.randn` / `Batch.rand`, so a step does not depend on how the
global batch is split over processes. Cost on one shared CPU thread, defaults, 128 px: ~2.9 training samples/s
(a step of 8 in ~2.8 s) and ~6 s per slice sampled (50 DDIM steps).

Sampling: a `DDIMScheduler` (eta 0: no noise is added along the way) in `sample_steps` <= 50 steps, on the EMA
weights. The start noise is ONE (H, W) field drawn from the seed and given to every slice of the stack (one
"style" per volume, as the other generators' style codes), so the same seed gives the same images, a slice's
image does not depend on the other slices, and two seeds differ.

`background: real` (background-preserving, like `gmm`'s): the region R to sample is the heart (labels 1-3)
dilated by `inpaint_margin_px`; everything else is known from the real slice behind the mask (`context`). At
every DDIM step, before the network sees x_t, the known part of x_t is replaced by the real slice noised to
timestep t with the scheduler's `add_noise` (fresh noise per step, again one field per seed shared by the
slices), so the heart is denoised in agreement with its real surroundings (RePaint, Lugmayr et al. 2022, without
its resampling jumps). The final image is w * sample + (1 - w) * real with w rising from 0 at R's edge to 1 at
`blend_px` inside it: outside R the image IS the real slice, bit for bit; a slice without heart is returned as
its real slice. With `background: generated` the whole slice is sampled by `DiffusionInferer.sample`; the
real-background loop is the same loop plus the replacement (with an R covering the whole slice they give the
same images). The sample grids written during training paint into the real slices shown in them, as sampling does.
With `crop_px` the model trains and paints on heart-centred windows (`synthesis.train.LearnedGenerator.sample`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer
from monai.networks.nets import SPADEDiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from segmentation.runtime import DistributedContext, training_module
from synthesis.base import check_context, register
from synthesis.config import TrainConfig
from synthesis.train import Batch, LearnedGenerator, blend, onehot

TRAIN_TIMESTEPS = 1000


def norm_groups(channels: list[int]) -> int:
    """Group-norm groups that divide every level's channels: MONAI's 32 where possible."""
    return math.gcd(32, *channels)


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

    def size_divisor(self) -> int:
        return 2 ** (len(self.channels) - 1)  # the coarsest level is not downsampled


@register("diffusion")
class DiffusionGenerator(LearnedGenerator):
    config: DiffusionConfig
    config_class: ClassVar[type[DiffusionConfig]] = DiffusionConfig

    def __init__(self, config: DiffusionConfig | None = None):
        super().__init__(config)
        cfg = self.config
        self.scheduler = DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, schedule=cfg.schedule,
                                       prediction_type=cfg.prediction_type)
        self.inferer = DiffusionInferer(self.scheduler)

    @property
    def inpaints(self) -> bool:
        return False  # background: real is kept while sampling (RePaint), not by more condition channels

    def build_network(self, image_shape: tuple[int, int]) -> nn.Module:
        cfg = self.config
        self.z_dim = 0  # the randomness is the start noise
        levels = len(cfg.channels)
        return SPADEDiffusionModelUNet(
            spatial_dims=2, in_channels=1, out_channels=1, label_nc=self.n_labels, channels=tuple(cfg.channels),
            attention_levels=(False,) * (levels - 1) + (bool(cfg.attention_lowest),),
            num_res_blocks=cfg.num_res_blocks, norm_num_groups=norm_groups(cfg.channels),
            num_head_channels=math.gcd(cfg.channels[-1], 32), spade_intermediate_channels=cfg.spade_hidden)

    def build_training(self) -> None:
        self.opt = torch.optim.Adam(self.net.parameters(), lr=self.config.lr)

    def training_parts(self) -> dict[str, Any]:
        return {"opt": self.opt}

    def prepare_training(self, ctx: DistributedContext, batch: Batch) -> None:
        timesteps = torch.zeros(len(batch.image), dtype=torch.long, device=self.device)
        self.train_net = training_module(self.net, ctx, compile=self.config.compile,
                                         example=(batch.image, timesteps, batch.onehot),
                                         what=f"{self.name} network", dtype=self.amp_dtype)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        noise = batch.randn(*batch.image.shape[1:]).contiguous(memory_format=self.memory_format)
        timesteps = (batch.rand() * TRAIN_TIMESTEPS).long().clamp_(max=TRAIN_TIMESTEPS - 1)
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            # a partial, not the module: the inferer passes `seg` only to a bare SPADEDiffusionModelUNet, and
            # train_net may be compiled or wrapped in DDP
            prediction = self.inferer(inputs=batch.image, diffusion_model=partial(self.train_net, seg=batch.onehot),
                                      noise=noise, timesteps=timesteps)
            target = noise if self.config.prediction_type == "epsilon" else \
                self.scheduler.get_velocity(batch.image, noise, timesteps)
            loss = F.mse_loss(prediction.float(), target.float())
        self.backward(loss)
        self.optimizer_step(self.opt)
        return {"loss": float(loss.detach())}

    # -------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def render(self, conditions: np.ndarray, *, seed: int, use_ema: bool = True, chunk: int = 32,
               context: np.ndarray | None = None) -> np.ndarray:
        """Images for condition maps; with `context` (the real slices) in the background-preserving mode."""
        seed = int(seed)
        net = self.ema.module if use_ema else self.net
        was_training = net.training
        net.eval()
        region = weight = None
        if context is not None:
            context = check_context(context, conditions)
            region, weight = self.inpainting(conditions)
        out = []
        try:
            for start in range(0, len(conditions), chunk):
                part = slice(start, start + chunk)
                seg = onehot(torch.from_numpy(conditions[part]).to(self.device), self.n_labels)
                known = None if context is None else (context[part], region[part])
                x = self.denoise(net, seg, seed, known)
                image = ((x.float()[:, 0] + 1) / 2).clamp_(0, 1).cpu().numpy()
                if context is not None:
                    image = blend(image, context[part], weight[part])
                out.append(image.astype(np.float32, copy=False))
        finally:
            net.train(was_training)
        return np.concatenate(out) if out else np.zeros(conditions.shape, np.float32)

    def denoise(self, net: nn.Module, seg: torch.Tensor, seed: int,
                known: tuple[np.ndarray, np.ndarray] | None = None) -> torch.Tensor:
        """DDIM from the seed's noise to images in [-1, 1] (n, 1, H, W); `known`: (real slices in [0, 1],
        region to sample) for the background-preserving mode."""
        cfg = self.config
        scheduler = DDIMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, schedule=cfg.schedule,
                                  prediction_type=cfg.prediction_type)
        scheduler.set_timesteps(cfg.sample_steps)
        generator = torch.Generator().manual_seed(seed)  # per chunk: every chunk sees the same noise fields
        n, (h, w) = len(seg), self.image_shape

        def draw() -> torch.Tensor:  # one field per seed, shared by the slices; drawn on the CPU for every device
            return torch.randn(1, 1, h, w, generator=generator).to(self.device).repeat(n, 1, 1, 1)

        x = draw()
        if known is None:
            return self.inferer.sample(input_noise=x, diffusion_model=net, scheduler=scheduler, verbose=False,
                                       seg=seg)
        real, region = known
        x0 = torch.from_numpy(real * 2 - 1)[:, None].to(self.device)
        sampled = torch.from_numpy(region)[:, None].to(self.device)
        for t in scheduler.timesteps:  # the loop of DiffusionInferer.sample, plus the known part re-imposed
            x = torch.where(sampled, x, scheduler.add_noise(x0, draw(), t.reshape(1)))
            prediction = net(x, timesteps=torch.Tensor((t,)).to(self.device), seg=seg)
            x, _ = scheduler.step(prediction, t, x)
        return x
