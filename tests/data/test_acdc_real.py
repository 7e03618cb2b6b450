"""The real ACDC training set (skipped where absent): the layout finds every case, two patients load."""
from __future__ import annotations

import time

import numpy as np
import pytest

from data.layouts import detect_layout, list_cases
from data.validate import load_case


def test_list_cases_finds_all_acdc_cases_without_reading(acdc_root):
    start = time.perf_counter()
    cases = list_cases(acdc_root)
    elapsed = time.perf_counter() - start

    assert detect_layout(acdc_root) == "acdc"
    assert len(cases) == 200 and len({c.patient_id for c in cases}) == 100
    assert {c.phase for c in cases} == {"ED", "ES"}
    assert all(c.mask_path is not None and c.mask_path.name.endswith("_gt.nii.gz") for c in cases)
    assert {c.metadata["group"] for c in cases} == {"NOR", "MINF", "DCM", "HCM", "RV"}
    assert elapsed < 5.0, f"listing took {elapsed:.1f} s; it must not read images"


@pytest.mark.filterwarnings("ignore::data.validate.DataWarning")  # slices beyond the heart: normal
@pytest.mark.parametrize("patient", ["patient001", "patient090"])  # 090 also holds a _4d file, ignored
def test_load_real_patient(acdc_root, patient):
    ed_ref, es_ref = (c for c in list_cases(acdc_root) if c.patient_id == patient)
    volumes = {}
    for ref in (ed_ref, es_ref):
        image, mask = load_case(ref)
        assert image.shape == mask.shape and image.array.dtype == np.float32
        sx, sy, sz = image.spacing
        assert 1.0 <= sx <= 2.0 and sy == pytest.approx(sx) and 5.0 <= sz <= 10.0
        assert set(np.unique(mask.array).tolist()) == {0, 1, 2, 3}
        volumes[ref.phase] = (mask.array == 3).sum() * np.prod(mask.spacing) / 1000.0
    assert volumes["ED"] > volumes["ES"] > 5.0  # LV blood pool in ml
