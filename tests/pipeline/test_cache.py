"""Unit caching: done units are skipped, started units resume in place, stale units start afresh."""
import json

import pytest

from pipeline.cache import run_unit, stable_hash


def test_stable_hash_ignores_dict_order_and_sees_values():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_done_unit_is_skipped(tmp_path):
    calls = []

    def work(d):
        calls.append(d)
        (d / "out.txt").write_text("x")
        return {"value": 1}

    assert run_unit(tmp_path / "u", "k1", work) == {"value": 1}
    assert run_unit(tmp_path / "u", "k1", work) == {"value": 1}
    assert len(calls) == 1
    assert json.loads((tmp_path / "u" / "done.json").read_text())["key"] == "k1"


def test_killed_unit_resumes_in_place_and_stale_unit_is_reset(tmp_path):
    unit = tmp_path / "u"

    def killed(d):
        (d / "checkpoint.pt").write_text("half way")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_unit(unit, "k1", killed)
    assert not (unit / "done.json").exists()  # a half-written unit is never taken as finished

    seen = {}

    def resumed(d):
        seen["checkpoint"] = (d / "checkpoint.pt").read_text()
        return {}

    run_unit(unit, "k1", resumed)
    assert seen["checkpoint"] == "half way"

    def fresh(d):
        seen["stale_left"] = (d / "checkpoint.pt").exists()
        return {}

    run_unit(unit, "k2", fresh)  # another key: the old outputs must not leak into the new unit
    assert seen["stale_left"] is False


def test_a_checkpoint_of_another_run_in_the_unit_starts_it_over(tmp_path):
    """Issue 17: a unit folder with the right key but another run's checkpoint (two runs at once, before the run
    lock) used to fail with 'last.pt belongs to another run' in every later run."""
    from data.types import ForeignCheckpointError

    unit = tmp_path / "u"
    unit.mkdir()
    (unit / ".started").write_text("k1")
    (unit / "last.pt").write_text("written by a run with other settings")
    seen = []

    def work(d):
        seen.append(sorted(p.name for p in d.iterdir()))
        if (d / "last.pt").exists():
            raise ForeignCheckpointError(f"{d / 'last.pt'} belongs to another run")
        return {"trained": True}

    assert run_unit(unit, "k1", work) == {"trained": True}
    assert seen == [[".started", "last.pt"], [".started"]]
    assert json.loads((unit / "done.json").read_text())["key"] == "k1"


def test_an_unreadable_started_file_resets_the_unit(tmp_path):
    unit = tmp_path / "u"
    unit.mkdir()
    (unit / ".started").write_bytes(b"\xff\xfe not text")
    (unit / "old.txt").write_text("x")
    assert run_unit(unit, "k1", lambda d: {"left": sorted(p.name for p in d.iterdir())}) == {"left": [".started"]}
