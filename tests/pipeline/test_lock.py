"""The run-directory lock: one run per folder, a lock left by a dead run taken over, released at exit."""
from __future__ import annotations

import json
import os

import pytest

from pipeline.errors import RunDirLocked
from pipeline.lock import LOCK_NAME, RunLock


def test_a_held_lock_refuses_a_second_holder_and_is_released(tmp_path):
    with RunLock(tmp_path / "run") as first:
        record = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and first.stale is None
        with pytest.raises(RunDirLocked, match=rf"^run directory {tmp_path / 'run'} is in use by another "
                                               rf"cmr-synth run \(pid {os.getpid()} on .+, started .+\)"):
            RunLock(tmp_path / "run").acquire()  # flock: a second open file conflicts, even in one process
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunLock(tmp_path / "run") as again:
        assert again.stale is None  # a clean release leaves nothing to take over


def test_a_lock_file_nobody_holds_is_taken_over_with_a_notice(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999999, "host": "node7", "started": "yesterday"}))
    with RunLock(tmp_path) as lock:
        assert lock.stale["pid"] == 999999
        assert "taking over the lock left by a run that is gone (pid 999999 on node7, started yesterday)" in \
            lock.notice()
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_file_system_without_locks_runs_unguarded_and_says_so(tmp_path, monkeypatch):
    import errno
    import fcntl

    def flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)
    with RunLock(tmp_path) as lock:
        assert "does not support file locks" in lock.notice()
    assert not (tmp_path / LOCK_NAME).exists()
