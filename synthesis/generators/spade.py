"""`spade`: MONAI's SPADE generator (Park et al., CVPR 2019) as a VAE-GAN conditioned on the one-hot mask.

The network is built from the two halves of `monai.networks.nets.SPADENet` (`SPADEEncoder`, `SPADEDecoder`)
so that a style code z is ALWAYS an input: with `is_vae` the encoder maps the real image to q(z | image)
(KL to N(0, I), L1 of the reconstruction), without it z ~ N(0, I) is plain GAN noise. At sampling z ~ N(0, I),
one per seed, shared by all slices of a volume. Two departures from SPADENet as is, both for image quality:

* SPADENet's last residual block outputs the image channel itself at half resolution, which is then
  nearest-upsampled and smoothed by one 1-channel conv: blocky, blurry images. Here the decoder ends in
  `head_channels` features and a small full-resolution head (conv - LeakyReLU - conv - tanh) makes the image.
* SPADENet/SPADEDecoder mutate the `channels` list they are given (reverse + append); fresh lists are passed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets.spade_network import SPADEDecoder, SPADEEncoder
from torch import nn

from data.types import NUM_CLASSES
from synthesis.base import register
from synthesis.config import AdversarialConfig, GeneratorConfig
from synthesis.train import AdversarialGenerator, Batch

LEAKY = ("LEAKYRELU", {"negative_slope": 0.2})


class SpadeStyleNet(nn.Module):
    """(one-hot mask, z) -> image in [-1, 1]; optional encoder image(+mask) -> (mu, logvar)."""

    def __init__(self, image_shape: tuple[int, int], channels: list[int], spade_hidden: int, z_dim: int,
                 head_channels: int, encoder_in_channels: int = 0, upsampling: str = "nearest",
                 label_nc: int = NUM_CLASSES):
        super().__init__()
        self.encoder = None
        if encoder_in_channels:
            self.encoder = SPADEEncoder(spatial_dims=2, in_channels=encoder_in_channels, z_dim=z_dim,
                                        channels=list(channels), input_shape=list(image_shape), act=LEAKY)
        self.decoder = SPADEDecoder(spatial_dims=2, out_channels=head_channels, label_nc=label_nc,
                                    input_shape=list(image_shape), channels=list(reversed(channels)), z_dim=z_dim,
                                    is_vae=True, spade_intermediate_channels=spade_hidden, act=LEAKY,
                                    last_act=LEAKY, upsampling_mode=upsampling)
        self.head = Convolution(spatial_dims=2, in_channels=head_channels, out_channels=1, kernel_size=3,
                                conv_only=True)

    def forward(self, onehot: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.decoder(onehot, z)))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder is None:
            raise RuntimeError("this network has no style encoder")
        return self.encoder(x)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    """mu + eps * sigma; `eps` ~ N(0, I) (drawn here when not given, e.g. `batch.randn(z_dim)` in training)."""
    eps = torch.randn_like(mu) if eps is None else eps.to(mu.dtype)
    return mu + eps * torch.exp(0.5 * logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q || N(0, I)) summed over z, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()


@dataclass
class SpadeDecoderConfig(GeneratorConfig):
    """The settings of `SpadeStyleNet`, shared by every generator built on it (`spade`, `cvae`)."""

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
    z_dim: int = field(default=32, metadata={"min": 1, "max": 1024, "help": "style code (latent) size"})

    def size_divisor(self) -> int:
        return 2 ** len(self.channels)  # one 2x downsampling per encoder level


@dataclass
class SpadeConfig(SpadeDecoderConfig, AdversarialConfig):
    """MONAI SPADE decoder (+ style encoder when is_vae) with a PatchGAN discriminator."""

    is_vae: bool = field(default=True, metadata={
        "help": "encode the real image's style (VAE-GAN, KL + L1); false = plain GAN fed with noise z"})
    lambda_kl: float = field(default=0.05, metadata={"min": 0.0, "help": "weight of the KL term (is_vae)"})
    lambda_l1: float = field(default=1.0, metadata={"min": 0.0,
                             "help": "weight of L1 between the image and its reconstruction from its own style "
                                     "code (is_vae only)"})
    lambda_ms: float = field(default=0.0, metadata={
        "min": 0.0, "keyed_unless_default": True,
        "help": "weight of the mode-seeking term (Mao et al., CVPR 2019): a second image of the same mask from "
                "another style code, and 1 / (mean |image difference| / mean |code difference|) is minimised, so "
                "that style codes change the image (0 = off; costs a second generator pass per step)"})


@register("spade")
class SpadeGenerator(AdversarialGenerator):
    config: SpadeConfig
    config_class: ClassVar[type[SpadeConfig]] = SpadeConfig

    def build_network(self, image_shape: tuple[int, int]) -> nn.Module:
        cfg = self.config
        self.z_dim = cfg.z_dim
        return SpadeStyleNet(image_shape, cfg.channels, cfg.spade_hidden, cfg.z_dim, cfg.head_channels,
                             encoder_in_channels=1 if cfg.is_vae else 0, upsampling=cfg.upsampling,
                             label_nc=self.condition_channels)

    def generator_forward(self, batch: Batch):
        cfg = self.config
        terms = {}
        if cfg.is_vae:
            mu, logvar = self.net.encode(batch.image)  # the encoder's gradients join the DDP all-reduce of `net`
            z = reparameterize(mu, logvar, batch.randn(cfg.z_dim))
            terms = {"kl": (cfg.lambda_kl, kl_divergence(mu, logvar))}
        else:
            z = batch.randn(cfg.z_dim)
        if cfg.lambda_ms > 0:  # a second code per mask, in the same (one) generator call: one DDP forward per step
            z2 = batch.randn(cfg.z_dim)
            fake, other = self.train_net(batch.onehot.repeat(2, 1, 1, 1), torch.cat([z, z2])).chunk(2)
            terms["ms"] = (cfg.lambda_ms, mode_seeking(fake, other, z, z2, batch.blend))
        else:
            fake = self.train_net(batch.onehot, z)
        if cfg.is_vae:
            terms["l1"] = (cfg.lambda_l1, (fake.float() - batch.image).abs().mean())
        return fake, terms


def mode_seeking(fake: torch.Tensor, other: torch.Tensor, z: torch.Tensor, z2: torch.Tensor,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over samples of 1 / (mean |fake - other| / mean |z - z2|) (MSGAN's term, per sample so that it is a
    per-sample mean like every other loss and DDP's averaged gradient equals one process's): small when the
    style codes move the image. `weight`: where the images count (background: real: the painted region; outside
    it both are the real slice); a sample with nothing to paint adds 0."""
    weight = torch.ones_like(fake, dtype=torch.float32) if weight is None else weight
    dims = tuple(range(1, fake.dim()))
    area = weight.sum(dims)
    image_diff = ((fake.float() - other.float()).abs() * weight).sum(dims) / area.clamp_min(1e-6)
    code_diff = (z.float() - z2.float()).abs().mean(1)
    return torch.where(area > 0, 1.0 / (image_diff / code_diff + 1e-5), 0.0).mean()
