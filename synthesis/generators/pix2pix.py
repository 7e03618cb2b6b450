"""`pix2pix`: a MONAI U-Net from the one-hot mask to the image, L1 + PatchGAN (Isola et al., CVPR 2017).

Like the original, the randomness is dropout, kept on at sampling time (a noise channel would be ignored:
instance norm removes any spatially constant input, and L1 teaches the net to ignore the rest). At sampling
each dropout layer draws ONE mask per seed and applies it to every slice, so a stack looks like one scan
and the same seed gives the same images. Expect little diversity between seeds: that is pix2pix.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from monai.networks.nets import UNet
from torch import nn

from data.types import NUM_CLASSES
from synthesis.base import register
from synthesis.config import Pix2PixConfig
from synthesis.train import AdversarialGenerator, Batch


class SharedDropout(nn.Dropout):
    """nn.Dropout, except that while `shared` is set it is active even in eval mode and draws one mask for
    the first sample that every sample of the batch reuses."""

    shared: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.shared or self.p == 0:
            return super().forward(x)
        keep = (torch.rand_like(x[:1]) >= self.p).to(x.dtype)
        return x * keep / (1 - self.p)


class UNetGenerator(nn.Module):
    """(one-hot mask, unused z) -> image in [-1, 1]."""

    def __init__(self, channels: list[int], num_res_units: int, dropout: float):
        super().__init__()
        self.unet = UNet(spatial_dims=2, in_channels=NUM_CLASSES, out_channels=1, channels=list(channels),
                         strides=[2] * (len(channels) - 1), num_res_units=num_res_units, norm="INSTANCE",
                         act=("LEAKYRELU", {"negative_slope": 0.2}), dropout=dropout)
        for module in list(self.unet.modules()):  # MONAI builds nn.Dropout; make each one shareable
            for name, child in module.named_children():
                if type(child) is nn.Dropout:
                    setattr(module, name, SharedDropout(child.p))

    def forward(self, onehot: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return torch.tanh(self.unet(onehot))


@register("pix2pix")
class Pix2PixGenerator(AdversarialGenerator):
    config: Pix2PixConfig
    config_class: ClassVar[type[Pix2PixConfig]] = Pix2PixConfig

    def build_network(self, image_shape: tuple[int, int]) -> nn.Module:
        cfg = self.config
        self.z_dim = 0
        return UNetGenerator(cfg.channels, cfg.num_res_units, cfg.dropout)

    def generator_forward(self, batch: Batch):
        fake = self.net(batch.onehot)
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
