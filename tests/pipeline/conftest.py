"""The finished tiny pipeline run, shared by the modules that read it or copy it to change one thing."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.run import run_pipeline
from tests.pipeline.test_run import swap_rv_lv, tiny_config


@pytest.fixture(scope="session")
def extra_sets(phantom_root, tmp_path_factory) -> tuple[str, ...]:
    """Three extra test sets: two phantom patients as they are, the same two with RV/LV swapped in the files
    (remapped back by label_map), and a generated phantom in another scanner style."""
    base = tmp_path_factory.mktemp("extra")
    for name in ("same", "swapped"):
        for pid in ("patient005", "patient006"):
            shutil.copytree(phantom_root / pid, base / name / pid)
    for mask in (base / "swapped").rglob("*_gt.nii.gz"):
        swap_rv_lv(mask)
    return (f"data.extra_test_sets=[{{name: same, root: '{base / 'same'}'}}, {{name: swapped, root: "
            f"'{base / 'swapped'}', label_map: {{1: 3, 2: 2, 3: 1}}}}, {{name: lowfield, phantom_style: "
            f"lowfield_noisy, phantom_patients: 1}}]",)


@pytest.fixture(scope="session")
def finished(phantom_root, extra_sets, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    run_pipeline(tiny_config(phantom_root, run_dir, *extra_sets))
    return run_dir
