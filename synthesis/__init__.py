"""Synthesis stage: mask -> image generators, their training loop, mask sources, writers and quality metrics.

- `base`        Generator interface and registry (build_generator, load_generator), sample grids
- `config`      the bases of the generator sections, the stage's own settings and the quality metrics
- `generators`  one module per generator (class + settings): gmm, warp (non-learned), spade, pix2pix, cvae,
                diffusion; the package also assembles `SynthesisConfig` from the registry
- `train`       fit_loop: the one training loop of the learned generators (EMA, grids, checkpoints, DDP);
                `diffaugment` the differentiable augmentation its discriminators see
- `masks`       real, deformed and sampled masks with plausibility checks; `shape_model` samples new ones
- `synthesize`  writes synthetic volumes (NIfTI + masks, ACDC-like) and manifest.csv
- `quality`     segmentation consistency, Fréchet distance/KID, memorisation, diversity, intensities
- `export_nnunet`, `cli`  nnU-Net v2 export and the `synthesize` / `export-nnunet` commands
"""
from __future__ import annotations

# Importing the package registers every generator (synthesis.generators fills synthesis.base.REGISTRY), so
# whoever imports synthesis.base finds the registry full, without an import hidden in a function.
from synthesis import generators  # noqa: E402,F401
