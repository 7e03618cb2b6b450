"""Fixtures of the segmentation tests."""
from __future__ import annotations

import pytest
import torch

from data.types import PreparedCase
from tests.segmentation.cases import prepared_case


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks are dominated by per-op overhead: one thread is faster and steadier on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def small_cases() -> list[PreparedCase]:
    """4 patients x (ED, ES), 32 x 32 crops."""
    return [prepared_case(f"p{i}", phase, seed=2 * i + (phase == "ES"), lv_radius=4.5 if phase == "ED" else 3.5)
            for i in range(4) for phase in ("ED", "ES")]
