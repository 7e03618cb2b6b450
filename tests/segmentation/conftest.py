"""Fixtures of the segmentation tests."""
from __future__ import annotations

import pytest

from data.types import PreparedCase
from tests.segmentation.cases import prepared_case


@pytest.fixture(scope="module")
def small_cases() -> list[PreparedCase]:
    """4 patients x (ED, ES), 32 x 32 crops."""
    return [prepared_case(f"p{i}", phase, seed=2 * i + (phase == "ES"), lv_radius=4.5 if phase == "ED" else 3.5)
            for i in range(4) for phase in ("ED", "ES")]
