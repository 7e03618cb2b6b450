"""Fixtures shared by the generator tests."""
from __future__ import annotations

import pytest

from tests.synthesis.test_generators import toy_pairs


@pytest.fixture(scope="module")
def pairs():
    """Six toy (mask, image) training slices; test_generators.py overrides it with eight."""
    return toy_pairs(n=6)
