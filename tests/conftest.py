"""Shared fixtures. Expensive artefacts (phantom, prepared slices) are built once per session."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ACDC_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc" / "training"

# 2-core CI: one intra-op thread per test process keeps timings stable; tests are small anyway.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A small phantom in the ACDC layout (6 patients, ED + ES each)."""
    from data.phantom import write_phantom

    root = tmp_path_factory.mktemp("phantom")
    write_phantom(root, n_patients=6, seed=0)
    return root


@pytest.fixture(scope="session")
def acdc_root() -> Path:
    """The real ACDC training folder; tests using it skip cleanly where it is absent."""
    if not (ACDC_ROOT / "patient001" / "Info.cfg").is_file():
        pytest.skip(f"ACDC not found at {ACDC_ROOT}")
    return ACDC_ROOT


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
