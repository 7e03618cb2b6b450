"""Patient-level splits: disjoint, seeded, stratified, with nested training fractions."""
from __future__ import annotations

from collections import Counter

import pytest

from data.config import SplitConfig
from data.splits import Split, duplicate_patients, make_split, nested_fractions, read_split, write_split
from data.types import DataError

GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")
IDS = [f"patient{i:03d}" for i in range(1, 101)]
STRATA = {pid: GROUPS[i // 20] for i, pid in enumerate(IDS)}  # ACDC-like: 5 groups of 20, in blocks


def test_split_is_disjoint_complete_and_sized():
    split = make_split(IDS, SplitConfig(seed=0, n_test=20, n_val=10))
    train, val, test = set(split.train), set(split.val), set(split.test)
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(IDS)
    assert (len(test), len(val), len(train)) == (20, 10, 70)
    assert split.train == sorted(split.train) and split.val == sorted(split.val) and split.test == sorted(split.test)


def test_split_is_seeded_and_order_independent():
    cfg = SplitConfig(seed=3, n_test=20, n_val=10)
    a = make_split(IDS, cfg, strata=STRATA)
    b = make_split(list(reversed(IDS)) + IDS[:5], cfg, strata=STRATA)  # other order, duplicates
    assert a == b
    other = make_split(IDS, SplitConfig(seed=4, n_test=20, n_val=10), strata=STRATA)
    assert other.test != a.test and other.val != a.val


def test_stratification_spreads_groups():
    split = make_split(IDS, SplitConfig(seed=1, n_test=20, n_val=10), strata=STRATA)
    for part, per_group in ((split.test, 4), (split.val, 2), (split.train, 14)):
        counts = Counter(STRATA[p] for p in part)
        assert set(counts) == set(GROUPS)
        assert all(abs(n - per_group) <= 1 for n in counts.values()), counts


def test_incomplete_strata_fall_back_to_a_plain_shuffle():
    partial = {pid: g for pid, g in STRATA.items() if pid != IDS[0]}
    split = make_split(IDS, SplitConfig(seed=1), strata=partial)
    assert split == make_split(IDS, SplitConfig(seed=1))


def test_separate_test_root():
    test_ids = [f"test{i:03d}" for i in range(50)]
    split = make_split(IDS[:15], SplitConfig(seed=0, n_test=20, n_val=5), test_patient_ids=test_ids)
    assert split.test == sorted(test_ids)
    assert (len(split.val), len(split.train)) == (5, 10)  # n_test ignored
    with pytest.raises(ValueError, match="patient001"):
        make_split(IDS, SplitConfig(), test_patient_ids=IDS[:3])


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^data.split.n_test = 20 test \+ data.split.n_val = 10 validation \+ 1 "
                                         r"training patient need 31 patients, but only 25 were found; lower "
                                         r"data.split.n_test or data.split.n_val$"):
        make_split(IDS[:25], SplitConfig(n_test=20, n_val=10))
    with pytest.raises(ValueError, match=r"^data.split.n_val = 3 validation .*only 3 were found; lower "
                                         r"data.split.n_val$"):
        make_split(IDS[:3], SplitConfig(n_val=3), test_patient_ids=["t1"])


def test_nested_fractions_sizes_and_nesting():
    train = IDS[:70]
    fractions = nested_fractions(train, [0.5, 0.1, 0.25, 1.0, 0.01], seed=0)
    assert list(fractions) == ["0.01", "0.1", "0.25", "0.5", "1.0"]
    assert [len(v) for v in fractions.values()] == [1, 7, 18, 35, 70]  # max(1, round(f * 70))
    subsets = [set(v) for v in fractions.values()]
    assert all(small <= big for small, big in zip(subsets, subsets[1:]))
    assert fractions["1.0"] == sorted(train)
    assert nested_fractions(train, [0.1], seed=0)["0.1"] == fractions["0.1"]
    assert nested_fractions(train, [0.25], seed=1)["0.25"] != fractions["0.25"]
    with pytest.raises(ValueError, match="fraction 0"):
        nested_fractions(train, [0.0], seed=0)


def test_nested_fractions_are_stratified():
    train = IDS
    fractions = nested_fractions(train, [0.1, 0.5], seed=2, strata=STRATA)
    assert Counter(STRATA[p] for p in fractions["0.1"]) == Counter({g: 2 for g in GROUPS})
    assert all(abs(n - 10) <= 1 for n in Counter(STRATA[p] for p in fractions["0.5"]).values())


def test_split_carries_fractions_and_round_trips(tmp_path):
    split = make_split(IDS, SplitConfig(seed=5), strata=STRATA, fractions=[0.1, 0.25])
    assert set(split.fractions) == {"0.1", "0.25"}
    assert set(split.fractions["0.25"]) <= set(split.train)
    path = write_split(tmp_path, split)
    assert path.name == "splits.json" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert read_split(path) == split == read_split(tmp_path)
    assert Split.from_dict(split.to_dict()) == split
    write_split(tmp_path / "other.json", split)
    assert read_split(tmp_path / "other.json") == split


def test_read_split_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_split(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"train": []}')
    with pytest.raises(DataError, match="'val'"):
        read_split(tmp_path / "bad.json")


def test_linked_patients_always_land_on_one_side_and_in_the_same_fractions():
    ids = [f"p{i:02d}" for i in range(30)]
    linked = duplicate_patients({"p03": ["a"], "p17": ["a", "b"], "p25": ["b"], "p09": ["c"]})
    assert linked == [{"p03", "p17", "p25"}]
    for seed in range(40):
        split = make_split(ids, SplitConfig(seed=seed, n_test=8, n_val=4), fractions=[0.1, 0.5, 1.0], linked=linked)
        sides = [set(split.train), set(split.val), set(split.test)]
        assert sum(bool(linked[0] & side) for side in sides) == 1
        assert sorted(set().union(*sides)) == ids
        for members in split.fractions.values():
            assert linked[0] <= set(members) or not linked[0] & set(members)
        assert set(split.fractions["0.1"]) <= set(split.fractions["0.5"]) <= set(split.fractions["1.0"])


def test_duplicate_images_are_found_by_voxels_not_file_bytes(tmp_path, rng):
    import numpy as np

    from data.cache import voxel_sha1
    from data.io import write_nifti

    image = rng.random((8, 8, 3)).astype(np.float32)
    write_nifti(tmp_path / "a.nii.gz", image, np.eye(4))
    write_nifti(tmp_path / "b.nii", image, np.eye(4))  # other container, same voxels
    write_nifti(tmp_path / "c.nii.gz", image + 1, np.eye(4))
    assert voxel_sha1(tmp_path / "a.nii.gz") == voxel_sha1(tmp_path / "b.nii") != voxel_sha1(tmp_path / "c.nii.gz")


def test_repeated_draws_are_disjoint_stratified_and_start_with_the_nested_subset(tmp_path):
    split = make_split(IDS, SplitConfig(seed=3, n_test=20, n_val=10), strata=STRATA, fractions=[0.1, 1.0], draws=5)
    draws = split.draws["0.1"]
    assert draws["mode"] == "disjoint" and len(draws["patients"]) == 5
    assert draws["patients"][0] == split.fractions["0.1"]  # draw 0 is today's subset
    seen = [set(d) for d in draws["patients"]]
    assert all(len(d) == 7 for d in seen) and len(set().union(*seen)) == 35  # 5 x 7, pairwise disjoint
    assert set().union(*seen) <= set(split.train)  # never a validation or test patient
    for draw in draws["patients"]:  # each window holds every group (7 patients over 5 groups: 1 or 2 each)
        assert set(Counter(STRATA[p] for p in draw).values()) <= {1, 2} and len({STRATA[p] for p in draw}) == 5
    assert split.draws["1.0"] == {"mode": "all", "patients": [split.train]}  # every patient: one draw
    assert read_split(write_split(tmp_path, split)) == split


def test_repeated_draws_are_independent_when_the_patients_do_not_suffice_and_keep_linked_pairs():
    ids = [f"p{i:02d}" for i in range(30)]
    linked = [{"p03", "p17"}]
    for seed in range(10):
        split = make_split(ids, SplitConfig(seed=seed, n_test=8, n_val=4), fractions=[0.4], linked=linked, draws=4)
        draws = split.draws["0.4"]
        assert draws["mode"] == "independent"  # 4 x 7 > 18 training patients
        assert draws["patients"][0] == split.fractions["0.4"] and len(draws["patients"]) == 4
        assert len({tuple(d) for d in draws["patients"]}) == 4  # no draw repeated
        for members in draws["patients"]:
            assert set(members) <= set(split.train)
            assert linked[0] <= set(members) or not linked[0] & set(members)
    assert make_split(ids, SplitConfig(seed=0, n_test=8, n_val=4), fractions=[0.4]).draws == {}  # one draw: none


def test_outer_folds_partition_the_patients_outside_validation_and_each_draw_trains_off_its_fold(tmp_path):
    cfg = SplitConfig(seed=3, n_test=18, n_val=10)
    plain = make_split(IDS, cfg, strata=STRATA, fractions=[0.1, 1.0])
    split = make_split(IDS, cfg, strata=STRATA, fractions=[0.1, 1.0], draws=3, outer_folds=5)
    assert split.val == plain.val  # the validation patients do not move
    folds = [set(f) for f in split.test_folds]
    assert len(folds) == 5 and all(len(f) == 18 for f in folds)
    assert set().union(*folds) == set(IDS) - set(split.val) and sum(map(len, folds)) == 90  # a partition
    for fold in folds:  # stratified: 18 patients over 5 groups of equal size, 3 or 4 each
        assert set(Counter(STRATA[p] for p in fold).values()) <= {3, 4}
    assert split.test == split.test_folds[0] and set(split.train) == set(IDS) - set(split.val) - folds[0]
    draws = split.draws["0.1"]
    assert draws["mode"] == "cross-validation" and draws["folds"] == [0, 1, 2, 3, 4]  # draws raised to the folds
    assert draws["patients"][0] == split.fractions["0.1"]  # draw 0 is the nested subset of the plain split
    for members, fold in zip(draws["patients"], draws["folds"]):
        assert len(members) == 7 and not set(members) & (folds[fold] | set(split.val))
    full = split.draws["1.0"]  # every patient of the other folds: one draw per fold
    assert full["folds"] == [0, 1, 2, 3, 4]
    assert [set(p) for p in full["patients"]] == [set(IDS) - set(split.val) - f for f in folds]
    assert read_split(write_split(tmp_path, split)) == split


def test_outer_folds_keep_linked_patients_in_one_fold_and_refuse_a_separate_test_root():
    ids = [f"p{i:02d}" for i in range(30)]
    linked = [{"p03", "p17"}]
    for seed in range(10):
        split = make_split(ids, SplitConfig(seed=seed, n_test=8, n_val=4), fractions=[0.4], linked=linked,
                           draws=6, outer_folds=3)
        assert sum(bool(linked[0] & set(f)) for f in split.test_folds) <= 1
        for members in split.draws["0.4"]["patients"]:
            assert linked[0] <= set(members) or not linked[0] & set(members)
    with pytest.raises(ValueError, match="separate test root"):
        make_split(ids, SplitConfig(seed=0, n_test=8, n_val=4), test_patient_ids=["q1"], outer_folds=3)
