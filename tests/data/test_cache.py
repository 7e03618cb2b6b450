"""Preprocessed-slice store: hits skip NIfTI reads, changed config or file content rebuilds, atomic."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

import data.preprocess
from data.cache import cache_key, prepare_cases
from data.config import PreprocessConfig
from data.io import write_nifti
from data.types import CaseRef, DataError
from tests.helpers import count_calls


def write_case(folder, patient, phase, rng, value=3):
    image = rng.normal(100, 20, (40, 36, 3)).astype(np.float32)
    mask = np.zeros((40, 36, 3), np.uint8)
    mask[14:26, 12:24, :] = 2
    mask[17:23, 15:21, :] = value
    affine = np.diag([-1.5, -1.5, 8.0, 1.0])
    img = write_nifti(folder / f"{patient}_{phase}.nii.gz", image, affine)
    gt = write_nifti(folder / f"{patient}_{phase}_gt.nii.gz", mask, affine, is_label=True)
    return CaseRef(patient, phase, img, gt)


@pytest.fixture
def refs(tmp_path, rng):
    folder = tmp_path / "data"
    return [write_case(folder, f"p{i}", phase, rng) for i in range(2) for phase in ("ED", "ES")]


@pytest.fixture
def loads(monkeypatch):
    """Counts calls of load_case by preprocessing (what a cache hit must avoid)."""
    return count_calls(monkeypatch, data.preprocess, "load_case")


CFG = PreprocessConfig(target_spacing=1.5, crop_size=32)


def in_memory(case):
    mask = None if case.mask is None else np.array(case.mask)
    return dataclasses.replace(case, image=np.array(case.image), mask=mask)


def assert_same(a, b):
    assert a.ref == b.ref and a.geometry == b.geometry
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)


def test_second_call_reads_the_cache(refs, loads, tmp_path):
    cache = tmp_path / "cache"
    first = prepare_cases(refs, CFG, cache)
    assert sorted(loads) == sorted(r.case_id for r in refs)
    assert len(list(cache.glob("*/meta.json"))) == len(refs) and not list(cache.glob("*.npz"))
    second = prepare_cases(refs, CFG, cache)
    assert len(loads) == len(refs)  # no new reads
    for a, b in zip(first, second):
        assert_same(a, b)
    assert [c.case_id for c in second] == [r.case_id for r in refs]
    assert second[0].image.dtype == np.float32 and second[0].mask.dtype == np.uint8


def test_changed_config_or_label_map_rebuilds(refs, loads, tmp_path):
    cache = tmp_path / "cache"
    prepare_cases(refs, CFG, cache)
    loads.clear()
    other = prepare_cases(refs[:1], PreprocessConfig(target_spacing=1.5, crop_size=48), cache)
    assert loads == [refs[0].case_id] and other[0].image.shape == (3, 48, 48)
    loads.clear()
    swapped = prepare_cases(refs[:1], CFG, cache, label_map={0: 0, 1: 1, 2: 3, 3: 2})
    assert loads == [refs[0].case_id]
    assert set(np.unique(swapped[0].mask)) == {0, 2, 3} and (swapped[0].mask == 2).sum() < (swapped[0].mask == 3).sum()
    loads.clear()
    prepare_cases(refs, CFG, cache)  # the original entries are still there
    assert loads == []
    keys = {cache_key(refs[0], CFG), cache_key(refs[0], PreprocessConfig(crop_size=48)),
            cache_key(refs[0], CFG, {0: 0, 1: 1, 2: 3, 3: 2})}
    assert len(keys) == 3 and cache_key(refs[0], CFG) == cache_key(refs[0], PreprocessConfig(1.5, 32))


def test_changed_file_content_rebuilds_that_case(refs, loads, tmp_path, rng):
    cache = tmp_path / "cache"
    before = prepare_cases(refs, CFG, cache)
    key = cache_key(refs[1], CFG)
    write_case(refs[1].image_path.parent, refs[1].patient_id, refs[1].phase, rng, value=1)  # same paths
    assert cache_key(refs[1], CFG) != key
    loads.clear()
    after = prepare_cases(refs, CFG, cache)
    assert loads == [refs[1].case_id]
    assert (after[1].mask == 1).any() and not (before[1].mask == 1).any()


def test_half_written_and_corrupt_entries_are_ignored(refs, loads, tmp_path):
    cache = tmp_path / "cache"
    # In-memory copies: truncating a file under a live memory map would make reading the map fault (SIGBUS).
    first = [in_memory(c) for c in prepare_cases(refs[:1], CFG, cache)]
    (entry,) = (p for p in cache.iterdir() if not p.name.startswith("."))
    leftover = cache / f".{entry.name}.x1y2z3"  # what a killed atomic write leaves behind
    leftover.mkdir()
    (leftover / "image.npy").write_bytes((entry / "image.npy").read_bytes()[:100])
    loads.clear()
    assert_same(prepare_cases(refs[:1], CFG, cache)[0], first[0])
    assert loads == []
    image = entry / "image.npy"
    image.write_bytes(image.read_bytes()[:200])  # truncated entry (e.g. disk full outside our control)
    assert_same(prepare_cases(refs[:1], CFG, cache)[0], first[0])
    assert loads == [refs[0].case_id]
    assert np.load(image).shape == (3, 32, 32)  # rewritten whole
    (entry / "meta.json").write_text("{")  # unreadable metadata
    loads.clear()
    assert_same(prepare_cases(refs[:1], CFG, cache)[0], first[0])
    assert loads == [refs[0].case_id]
    assert sorted(p.name for p in cache.iterdir()) == sorted([entry.name, leftover.name])  # nothing else left


def test_masks_and_roles(refs, loads, tmp_path):
    cache = tmp_path / "cache"
    no_mask = CaseRef(refs[0].patient_id, refs[0].phase, refs[0].image_path, None)
    (case,) = prepare_cases([no_mask], CFG, cache, role="test", require_mask=False)
    assert case.mask is None and case.image.shape == (3, 32, 32)
    with pytest.raises(DataError, match="no mask"):
        prepare_cases([no_mask], CFG, cache)


def test_loading_is_fast(refs, tmp_path):
    cache = tmp_path / "cache"
    prepare_cases(refs, CFG, cache)
    start = time.perf_counter()
    prepare_cases(refs * 10, CFG, cache)
    assert time.perf_counter() - start < 2.0


def test_empty_mask_entry_is_not_reused_for_training(tmp_path, rng):
    ref = write_case(tmp_path / "data", "p9", "ED", rng)
    write_nifti(ref.mask_path, np.zeros((40, 36, 3), np.uint8), np.diag([-1.5, -1.5, 8.0, 1.0]), is_label=True)
    with pytest.warns(data.validate.DataWarning, match="no foreground"):
        (case,) = prepare_cases([ref], CFG, tmp_path / "cache", role="val")
    assert not case.mask.any()
    with pytest.raises(DataError, match="no foreground"):
        prepare_cases([ref], CFG, tmp_path / "cache", role="train")
