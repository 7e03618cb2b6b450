"""Differentiable augmentation of the discriminator's input (Zhao et al., "Differentiable Augmentation for
Data-Efficient GAN Training", NeurIPS 2020).

With a few hundred training slices a discriminator memorises the real set and its loss collapses to zero;
showing it randomly shifted / cut-out / re-contrasted versions of BOTH real and fake images (the same
transform distribution, gradients flowing through to the generator) keeps it honest without leaking the
augmentation into the generated images. Inputs are (B, C, H, W) = image channels then one-hot mask channels:
geometric ops move all channels together; intensity ops touch only the image channels.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from synthesis.config import DIFFAUGMENT_OPS as OPS


def diff_augment(tensors: Sequence[torch.Tensor], ops: Sequence[str], image_channels: int = 1,
                 translation: float = 0.125, cutout: float = 0.5) -> list[torch.Tensor]:
    """Apply `ops` (in the order of `OPS`) to every tensor of `tensors` with the SAME random parameters per
    sample index, fresh for each sample: a real and a fake batch of the same masks stay aligned, which
    feature matching needs (it compares D features location by location)."""
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"diffaugment: unknown op {unknown[0]!r}; choose from {list(OPS)}")
    out = list(tensors)
    if not ops or not out:
        return out
    x = out[0]
    b, _, h, w = x.shape
    kw = {"device": x.device}
    if "color" in ops:
        brightness = (torch.rand(b, 1, 1, 1, **kw) - 0.5) * 0.5
        contrast = torch.rand(b, 1, 1, 1, **kw) + 0.5
        out = [_color(t, image_channels, brightness.to(t.dtype), contrast.to(t.dtype)) for t in out]
    if "translation" in ops:
        sh, sw = int(h * translation + 0.5), int(w * translation + 0.5)
        dy = torch.randint(-sh, sh + 1, (b, 1, 1), **kw)
        dx = torch.randint(-sw, sw + 1, (b, 1, 1), **kw)
        out = [_translate(t, dy, dx) for t in out]
    if "cutout" in ops:
        ch, cw = int(h * cutout + 0.5), int(w * cutout + 0.5)
        cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), **kw)
        cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), **kw)
        ys = torch.arange(h, **kw).view(1, h, 1)
        xs = torch.arange(w, **kw).view(1, 1, w)
        keep = ~(((ys - cy).abs() < ch / 2) & ((xs - cx).abs() < cw / 2))
        out = [t * keep.unsqueeze(1).to(t.dtype) for t in out]
    return out


def _color(x: torch.Tensor, c: int, brightness: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    """Contrast scaling about the image mean and a brightness shift of the image channels ([-1, 1] images)."""
    image = x[:, :c]
    mean = image.mean(dim=(1, 2, 3), keepdim=True)
    return torch.cat([(image - mean) * contrast + mean + brightness, x[:, c:]], dim=1)


def _translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Integer shift per sample, zero-filled: out[y, x] = in[y + dy, x + dx] (exact, differentiable in x)."""
    b, c, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx
    padded = F.pad(x, [1, 1, 1, 1])  # sources outside the image read this zero border
    rows = (rows.clamp(-1, h) + 1).expand(b, h, w)
    cols = (cols.clamp(-1, w) + 1).expand(b, h, w)
    index = (rows * (w + 2) + cols).reshape(b, 1, h * w).expand(-1, c, -1)
    return padded.flatten(2).gather(2, index).view_as(x)
