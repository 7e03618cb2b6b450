"""`warp`: deformation alone, as an arm. Each synthetic volume is the real slice stack its mask draw came from, under
exactly that draw's warp (`synthesis.masks.deform_pair`: mask and slice in one pass), with nothing repainted and no
noise added; a `real` draw gives the real stack back unchanged.

The draws already carry that warped stack (`MaskDraw.image`, handed to `sample` as `context`), so `sample` returns it
as it is. Comparing `warp` with a painting generator under the same `synthesis.masks` settings separates what the
deformation brings from what the repainting brings; comparing it with `real` under strong augmentation asks whether
the deformed anatomies add anything beyond on-the-fly augmentation. Nothing is learned, so it is not a
`LearnedGenerator` (trained by one process, no checkpoints).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from synthesis.base import Generator, check_masks, check_pair, register, require_context
from synthesis.config import GeneratorConfig


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


@register("warp")
class WarpGenerator(Generator):
    config: WarpConfig
    config_class: ClassVar[type[WarpConfig]] = WarpConfig
    augmentation_only: ClassVar[bool] = True  # real slices, only deformed: a baseline, not synthesis

    def __init__(self, config: WarpConfig | None = None):
        super().__init__(config)
        self.slices_fitted = 0  # for the manifest only: warp learns nothing

    def fit(self, masks: np.ndarray, images: np.ndarray, out_dir: Path | str, *, seed: int = 0,
            dist: Any = None) -> dict[str, Any]:
        masks, _ = check_pair(masks, images)  # the same input checks as every generator
        self.slices_fitted = int(len(masks))
        return {"slices_fitted": self.slices_fitted}

    def sample(self, masks: np.ndarray, *, seed: int, context: np.ndarray | None = None) -> np.ndarray:
        """The real slices behind `masks`, warped alike (`context`), exactly; `seed` has nothing to choose."""
        masks = check_masks(masks)
        context = require_context(context, masks, "warp: returns the warped real slice itself")
        return context.copy()  # a copy: the caller's draw stays its own

    def state(self) -> dict[str, Any]:
        return {"slices_fitted": self.slices_fitted}

    def restore(self, state: dict[str, Any]) -> None:
        self.slices_fitted = int(state["slices_fitted"])
