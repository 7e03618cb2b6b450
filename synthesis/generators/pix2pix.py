"""`pix2pix`: a MONAI U-Net from the one-hot mask to the image, L1 + PatchGAN (Isola et al., CVPR 2017).

The U-Net is MONAI's `BasicUNet` with interpolation upsampling: the transposed convolutions of `UNet` left
a checkerboard lattice on ACDC after a few hundred steps. Like the original, the randomness is dropout in
the decoder, kept on at sampling time (a noise channel would be ignored: instance norm removes any
spatially constant input, and L1 teaches the net to ignore the rest). At sampling each dropout layer draws
ONE mask per seed and applies it to every slice, so a stack looks like one scan and the same seed gives
the same images. Expect little diversity between seeds: that is pix2pix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from data.types import NUM_CLASSES
from synthesis.base import register
from synthesis.config import AdversarialConfig
from synthesis.train import AdversarialGenerator, Batch


class SharedDropout(nn.Dropout):
    """Inverted dropout. While `shared` is set it is active even in eval mode and draws one mask for the
    first sample that every sample of the batch reuses (sampling). In training, while `batch` is set, each
    sample's mask comes from `batch.rand` (drawn for the whole global batch and sliced), so it does not
    depend on how the batch is split over processes."""

    shared: bool = False
    batch: Batch | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0 or not (self.training or self.shared):
            return x
        if self.shared:
            uniform = torch.rand_like(x[:1])
        elif self.batch is not None:
            uniform = self.batch.rand(*x.shape[1:]).to(x.dtype)
        else:
            uniform = torch.rand_like(x)
        return x * (uniform >= self.p).to(x.dtype) / (1 - self.p)


class UNetGenerator(nn.Module):
    """(one-hot mask, unused z) -> image in [-1, 1]."""

    def __init__(self, features: list[int], dropout: float, in_channels: int = NUM_CLASSES):
        super().__init__()
        self.unet = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=1, features=tuple(features),
                              act=("LEAKYRELU", {"negative_slope": 0.2}), norm="INSTANCE", dropout=dropout,
                              upsample="nontrainable")
        noisy = {"upcat_4", "upcat_3", "upcat_2"}  # as pix2pix: the coarser decoder blocks only; dropout at
        for part_name, part in self.unet.named_children():  # full resolution would be salt-and-pepper noise
            for module in list(part.modules()):
                for name, child in module.named_children():
                    if type(child) is nn.Dropout:
                        setattr(module, name, SharedDropout(child.p) if part_name in noisy else nn.Identity())

    def forward(self, onehot: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.unet(onehot))


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


@register("pix2pix")
class Pix2PixGenerator(AdversarialGenerator):
    config: Pix2PixConfig
    config_class: ClassVar[type[Pix2PixConfig]] = Pix2PixConfig

    def build_network(self, image_shape: tuple[int, int]) -> nn.Module:
        cfg = self.config
        self.z_dim = 0
        return UNetGenerator(cfg.features, cfg.dropout, in_channels=self.condition_channels)

    def generator_forward(self, batch: Batch):
        dropouts = [m for m in self.net.modules() if isinstance(m, SharedDropout)]
        for m in dropouts:
            m.batch = batch
        try:
            fake = self.train_net(batch.onehot)
        finally:
            for m in dropouts:
                m.batch = None
        return fake, {"l1": (self.config.lambda_l1, (fake.float() - batch.image).abs().mean())}

    def synthesize(self, net: nn.Module, onehot: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        dropouts = [m for m in net.modules() if isinstance(m, SharedDropout)]
        for m in dropouts:
            m.shared = True
        try:
            return net(onehot)
        finally:
            for m in dropouts:
                m.shared = False
