"""`cvae`: a conditional VAE (Sohn et al., NeurIPS 2015) of image given mask, no discriminator.

Encoder q(z | image, mask): MONAI `SPADEEncoder` (strided convs -> mu, logvar) on the image and the one-hot
mask. Decoder p(image | z, mask): the same SPADE decoder as `spade` (z through a linear layer to the coarsest
feature map, the mask through every SPADE normalisation). A decoder that took z as constant input channels
would lose it in its first instance norm. Loss: per-pixel L1 (or L2) + beta * KL with a linear warm-up.
With the decoder of `spade` but no discriminator, it shows what the adversarial loss adds: expect
smoother (blurrier) images.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from synthesis.base import register
from synthesis.config import TrainConfig
from synthesis.generators.spade import SpadeDecoderConfig, SpadeStyleNet, kl_divergence, reparameterize
from synthesis.train import Batch, LearnedGenerator


@dataclass
class CVAEConfig(SpadeDecoderConfig, TrainConfig):
    """Conditional VAE: q(z | image, mask) by a conv encoder, p(image | z, mask) by a SPADE decoder."""

    lr: float = field(default=2e-4, metadata={"min": 0.0, "max": 1.0, "help": "learning rate (Adam)"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={
        "len": 2, "min": 0.0, "max": 0.9999, "help": "Adam betas"})
    z_dim: int = field(default=16, metadata={"min": 1, "max": 1024, "help": "latent size"})
    lambda_kl: float = field(default=0.01, metadata={"min": 0.0,
                             "help": "beta: weight of KL (summed over z, mean over the batch) against the "
                                     "per-pixel mean reconstruction loss"})
    kl_warmup_steps: int = field(default=500, metadata={"min": 0,
                                 "help": "steps over which the KL weight ramps linearly from 0 (0 = none)"})
    reconstruction: str = field(default="l1", metadata={"choices": ["l1", "l2"], "help": "reconstruction loss"})


@register("cvae")
class CVAEGenerator(LearnedGenerator):
    config: CVAEConfig
    config_class: ClassVar[type[CVAEConfig]] = CVAEConfig

    def build_network(self, image_shape: tuple[int, int]) -> nn.Module:
        cfg = self.config
        self.z_dim = cfg.z_dim
        return SpadeStyleNet(image_shape, cfg.channels, cfg.spade_hidden, cfg.z_dim, cfg.head_channels,
                             encoder_in_channels=1 + self.condition_channels, upsampling=cfg.upsampling,
                             label_nc=self.condition_channels)

    def build_training(self) -> None:
        cfg = self.config
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, betas=tuple(map(float, cfg.betas)))

    def training_parts(self) -> dict:
        return {"opt": self.opt}

    def kl_weight(self, step: int) -> float:
        warmup = self.config.kl_warmup_steps
        return self.config.lambda_kl * (min(1.0, (step + 1) / warmup) if warmup else 1.0)

    def train_step(self, batch: Batch, step: int) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            mu, logvar = self.net.encode(torch.cat([batch.image, batch.onehot], 1))
            recon = self.train_net(batch.onehot, reparameterize(mu, logvar, batch.randn(self.z_dim))).float()
            loss_fn = F.l1_loss if self.config.reconstruction == "l1" else F.mse_loss
            rec = loss_fn(recon, batch.image)
            kl = kl_divergence(mu.float(), logvar.float())
            beta = self.kl_weight(step)
            loss = rec + beta * kl
        self.backward(loss)
        self.optimizer_step(self.opt)
        return {"loss": float(loss.detach()), "recon": float(rec.detach()), "kl": float(kl.detach()), "kl_weight": beta}
