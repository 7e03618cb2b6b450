"""The memory-mapped slice store: the same slices as the in-memory cache it replaces, resumable, rebuilt when
deleted, the same with several workers, and old `.npz` entries converted once without preprocessing."""
from __future__ import annotations

import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import data.cache
from data.cache import entry_path, legacy_entry_path, prepare_cases
from data.config import PreprocessConfig
from data.layouts import list_cases
from data.preprocess import preprocess_case
from data.types import CaseRef, DataError, DataWarning
from segmentation.datasets import make_train_stream
from tests.segmentation.cases import tiny_config
from tests.helpers import count_calls

CFG = PreprocessConfig(target_spacing=2.0, crop_size=96)


@pytest.fixture(scope="module")
def refs(phantom_root):
    """4 phantom patients, ED + ES: 8 cases."""
    return list_cases(phantom_root, "acdc")[:8]


@pytest.fixture(scope="module")
def in_memory(refs):
    """What the old cache held: every case preprocessed into memory."""
    return [preprocess_case(ref, CFG) for ref in refs]


@pytest.fixture
def builds(monkeypatch):
    """Case ids data.cache preprocesses in this process (what a store hit avoids)."""
    return count_calls(monkeypatch, data.cache, "preprocess_case")


def assert_same_cases(got, expected):
    assert [c.case_id for c in got] == [c.case_id for c in expected]
    for a, b in zip(got, expected):
        assert a.geometry == b.geometry
        for x, y in ((a.image, b.image), (a.mask, b.mask)):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)


def test_store_maps_exactly_the_slices_of_the_in_memory_cache(refs, in_memory, tmp_path):
    stored = prepare_cases(refs, CFG, tmp_path / "store")
    assert_same_cases(stored, in_memory)
    for case in stored:  # read on demand, never written through
        assert isinstance(case.image, np.memmap) and isinstance(case.mask, np.memmap)
        assert not case.image.flags.writeable and not case.mask.flags.writeable
    for s in range(len(stored[0].image)):
        assert np.array_equal(stored[0].image[s], in_memory[0].image[s])
    folder = entry_path(tmp_path / "store", refs[0], data.cache.cache_key(refs[0], CFG))
    assert sorted(p.name for p in folder.iterdir()) == ["image.npy", "mask.npy", "meta.json"]


def test_training_batches_from_the_store_equal_those_from_memory(refs, in_memory, tmp_path):
    """Bit-identical batches, with and without augmentation, and equal to indexing the old stacked arrays."""
    stored = prepare_cases(refs, CFG, tmp_path / "store")
    stacked_images = np.concatenate([c.image for c in in_memory])
    stacked_masks = np.concatenate([c.mask for c in in_memory])
    for augment in (False, True):
        cfg = tiny_config(augment=augment, batch_size=4, steps=3)
        batches = [list(make_train_stream("real", cases, None, cfg, seed=5).loader(0, 3))
                   for cases in (stored, in_memory)]
        for a, b in zip(*batches):
            assert a["image"].dtype == b["image"].dtype == torch.float32 and a["label"].dtype == torch.uint8
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    cfg = tiny_config(augment=True, batch_size=4, steps=3)
    forked = make_train_stream("real", stored, None, dataclasses.replace(cfg, num_workers=1), seed=5).loader(0, 3)
    for a, b in zip(forked, make_train_stream("real", in_memory, None, cfg, seed=5).loader(0, 3)):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])  # a loader worker maps too
    stream = make_train_stream("real", stored, None, tiny_config(augment=False, batch_size=4, steps=3), seed=5)
    for step, batch in enumerate(stream.loader(0, 3)):
        index = [i for _, i, _ in stream.plan(step)]
        assert np.array_equal(batch["image"][:, 0].numpy(), stacked_images[index])
        assert np.array_equal(batch["label"][:, 0].numpy(), stacked_masks[index])


def test_killed_preparation_resumes_with_the_finished_cases(refs, in_memory, builds, monkeypatch, tmp_path):
    real = data.cache.preprocess_case  # the counting one

    def dies_on_the_fourth(ref, *args, **kwargs):
        if len(builds) == 3:
            raise KeyboardInterrupt  # a kill in the middle of the loop
        return real(ref, *args, **kwargs)

    monkeypatch.setattr(data.cache, "preprocess_case", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        prepare_cases(refs, CFG, tmp_path / "store")
    assert builds == [r.case_id for r in refs[:3]]
    monkeypatch.setattr(data.cache, "preprocess_case", real)
    builds.clear()
    resumed = prepare_cases(refs, CFG, tmp_path / "store")
    assert builds == [r.case_id for r in refs[3:]]  # the three finished cases are not recomputed
    assert_same_cases(resumed, in_memory)


def test_deleted_store_or_entry_is_rebuilt(refs, in_memory, builds, tmp_path):
    store = tmp_path / "store"
    prepare_cases(refs, CFG, store)
    shutil.rmtree(store)
    builds.clear()
    assert_same_cases(prepare_cases(refs, CFG, store), in_memory)
    assert builds == [r.case_id for r in refs]
    (entry,) = store.glob(f"{refs[2].case_id}.*")
    shutil.rmtree(entry)
    builds.clear()
    assert_same_cases(prepare_cases(refs, CFG, store), in_memory)
    assert builds == [refs[2].case_id]


def test_two_workers_prepare_exactly_what_one_does(refs, tmp_path):
    one = prepare_cases(refs, CFG, tmp_path / "one", workers=1)
    two = prepare_cases(refs, CFG, tmp_path / "two", workers=2)
    assert_same_cases(two, one)
    for a in (tmp_path / "one").iterdir():
        b = tmp_path / "two" / a.name
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        assert all((a / f).read_bytes() == (b / f).read_bytes() for f in ("image.npy", "mask.npy", "meta.json"))
    assert_same_cases(prepare_cases(refs, CFG, tmp_path / "two", workers=2), one)  # hits, in the pool too


def test_workers_report_warnings_and_the_first_error_like_one_process(refs, tmp_path):
    small = PreprocessConfig(target_spacing=2.0, crop_size=32)  # cuts labels off: one warning per case
    with pytest.warns(DataWarning) as one:
        prepare_cases(refs[:4], small, tmp_path / "one")
    with pytest.warns(DataWarning) as two:
        prepare_cases(refs[:4], small, tmp_path / "two", workers=2)
    assert [str(w.message) for w in two] == [str(w.message) for w in one] and len(one) >= 4
    assert {w.filename for w in two} == {w.filename for w in one}
    missing = CaseRef(refs[1].patient_id, refs[1].phase, tmp_path / "nowhere.nii.gz", refs[1].mask_path)
    for workers in (1, 2):
        with pytest.raises(DataError, match="nowhere.nii.gz") as info:
            prepare_cases([refs[0], missing, refs[2]], CFG, tmp_path / f"bad{workers}", workers=workers)
        assert info.value.path == tmp_path / "nowhere.nii.gz"


def test_old_npz_entries_are_converted_once_without_preprocessing(refs, in_memory, builds, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    for ref, case in zip(refs, in_memory):  # what the previous data.cache.save_entry wrote
        key = data.cache.cache_key(ref, CFG)
        np.savez(legacy_entry_path(store, ref, key), image=case.image, mask=case.mask, key=np.array(key),
                 geometry=np.array(json.dumps(case.geometry.to_dict())))
    converted = prepare_cases(refs, CFG, store)
    assert builds == []  # nothing preprocessed again
    assert_same_cases(converted, in_memory)
    assert not list(store.glob("*.npz")) and len(list(store.glob("*/meta.json"))) == len(refs)
    assert all(isinstance(c.image, np.memmap) for c in converted)
    assert_same_cases(prepare_cases(refs, CFG, store), in_memory) and builds == []


def test_cases_beyond_the_open_file_limit_are_read_into_memory(refs, in_memory, monkeypatch, tmp_path):
    prepare_cases(refs, CFG, tmp_path / "store")
    monkeypatch.setattr(data.cache, "_mappable_arrays", lambda wanted: 4)  # room for two cases' image + mask
    with pytest.warns(DataWarning, match=f"{len(refs) - 2} of {len(refs)} are held in memory"):
        cases = prepare_cases(refs, CFG, tmp_path / "store")
    assert [isinstance(c.image, np.memmap) for c in cases] == [True, True] + [False] * (len(refs) - 2)
    assert_same_cases(cases, in_memory)


def test_preprocess_workers_is_a_runtime_setting(tmp_path):
    """More workers keep every key: the key of the prepare stage leaves the setting out."""
    from types import SimpleNamespace

    from pipeline.cache import stable_hash
    from pipeline.config import PipelineConfig, to_dict
    from pipeline.run import prepare_key

    cfg = PipelineConfig()
    keys = set()
    for workers in (1, 4):
        cfg.data.preprocess_workers = workers
        keys.add(prepare_key(SimpleNamespace(cfg=cfg)))
    without = {k: v for k, v in to_dict(cfg.data).items() if k != "preprocess_workers"}
    assert keys == {stable_hash(without, cfg.experiment.fractions, [], "content-keyed units")}


def test_evaluation_of_store_cases_equals_that_of_in_memory_cases(refs, in_memory, tmp_path):
    from segmentation.evaluate import evaluate_cases
    from segmentation.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config())
    stored = prepare_cases(refs[:2], CFG, tmp_path / "store")
    frames = [evaluate_cases(model, cases, None, arm="real", fraction=1.0, seed=0, save_predictions=False)
              for cases in (stored, in_memory[:2])]
    assert frames[0].equals(frames[1])


def test_parallel_evaluation_equals_one_process_and_writes_the_same_predictions(refs, tmp_path):
    """Scoring in 2 processes (chunks of cases, results in order) gives the one-process table and files."""
    from segmentation.evaluate import evaluate_cases
    from segmentation.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config())
    cases = prepare_cases(refs, CFG, tmp_path / "store")
    frames = {workers: evaluate_cases(model, cases, tmp_path / f"w{workers}", arm="real", fraction=1.0, seed=0,
                                      workers=workers) for workers in (1, 2)}
    pd.testing.assert_frame_equal(frames[1], frames[2])  # exact: the same code on the same inputs, one thread each
    assert list(frames[2]["case"]) == [c.case_id for c in cases] and len(cases) >= 3
    for case in cases:
        a, b = (np.asarray(nib.load(tmp_path / f"w{w}" / f"{case.case_id}_pred.nii.gz").dataobj) for w in (1, 2))
        np.testing.assert_array_equal(a, b)
