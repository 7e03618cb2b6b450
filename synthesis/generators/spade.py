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
        if not cfg.is_vae:
            return self.train_net(batch.onehot, batch.randn(cfg.z_dim)), {}
        mu, logvar = self.net.encode(batch.image)  # the encoder's gradients join the DDP all-reduce of `net`
        fake = self.train_net(batch.onehot, reparameterize(mu, logvar, batch.randn(cfg.z_dim)))
        return fake, {"kl": (cfg.lambda_kl, kl_divergence(mu, logvar)),
                      "l1": (cfg.lambda_l1, (fake.float() - batch.image).abs().mean())}
