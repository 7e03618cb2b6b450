"""Shared fixtures. Expensive artefacts (phantom, prepared slices) are built once per session."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

ACDC_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "acdc" / "training"

# Tests use tiny networks: with 2 OpenMP threads their small ops spin-wait on a busy second core (seen
# here: 0.02 s steps taking 5 s), so the suite runs on one intra-op thread.
torch.set_num_threads(1)


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


@pytest.fixture
def broken_compile(monkeypatch) -> None:
    """torch.compile as it fails where no compiler works: the compiled module raises when called."""
    def compile_(module, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no compiler here")
        return fail

    monkeypatch.setattr(torch, "compile", compile_)
