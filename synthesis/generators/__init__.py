"""The generators; importing this package fills `synthesis.base.REGISTRY`."""
from synthesis.generators import cvae, diffusion, gmm, pix2pix, spade, warp  # noqa: F401

from synthesis.base import REGISTRY

__all__ = ["REGISTRY"]
