"""data.io: names from files kept inside their folder; write failures as one clear error; file modes."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.io import inside
from data.types import DataError


@pytest.mark.parametrize("name", ["a.nii.gz", "sub/a.nii.gz", "sub/../a.nii.gz", "./a"])
def test_inside_keeps_names_that_stay_in_the_root(tmp_path, name):
    assert inside(tmp_path, name, source="m.csv", what="path") == tmp_path / name


@pytest.mark.parametrize("name", ["../a", "sub/../../a", "/etc/passwd", "", " ", "a\x00b"])
def test_inside_refuses_names_that_leave_the_root(tmp_path, name):
    with pytest.raises(DataError, match=r"^m\.csv: line 2: path .* points outside"):
        inside(tmp_path, name, source="m.csv", what="line 2: path")


@pytest.mark.parametrize("name", ["sub/a", ".", ".."])
def test_inside_flat_wants_a_plain_file_name(tmp_path, name):
    with pytest.raises(DataError, match="expected a plain file name"):
        inside(tmp_path, name, source="m.csv", what="case", flat=True)


def _no_temp_files(folder):
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "no space left on device"),
                                         (errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")])
def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch, code, cause):
    from data.io import write_text
    from data.types import WriteError

    target = write_text(tmp_path / "a.json", "old")

    def replace(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(WriteError) as info:
        write_text(target, "new")
    assert str(info.value) == f"cannot write {target}: {cause}"
    assert target.read_text() == "old" and _no_temp_files(tmp_path)


def test_a_read_only_folder_names_the_file_not_the_temp_file(tmp_path, monkeypatch):
    import tempfile

    from data.io import write_csv
    from data.types import WriteError

    def mkstemp(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", dir)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(WriteError, match=f"^cannot write {tmp_path / 'x.csv'}: permission denied$"):
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / "x.csv")


def test_other_os_errors_are_not_disguised(tmp_path, monkeypatch):
    from data.io import write_text

    def replace(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="Input/output error"):
        write_text(tmp_path / "a.txt", "x")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_torch_save_on_a_full_disk_says_so(tmp_path, monkeypatch):
    """torch's own writer reports a full disk as 'RuntimeError: ... unexpected pos'; written through a Python
    file (here /dev/full, a device that is always full) it is ENOSPC, and so one clear WriteError."""
    import builtins

    import torch

    import data.io
    from data.io import save_torch
    from data.types import WriteError

    target = save_torch(tmp_path / "last.pt", {"step": 1})
    before = target.read_bytes()
    monkeypatch.setattr(data.io, "open", lambda path, mode: builtins.open("/dev/full", mode), raising=False)
    with pytest.raises(WriteError, match=f"^cannot write {target}: no space left on device$"):
        save_torch(target, {"step": 2, "weights": torch.zeros(100_000)})
    assert target.read_bytes() == before and _no_temp_files(tmp_path)


def test_outputs_honour_the_umask(tmp_path):
    from data.io import save_torch, umask, write_nifti, write_text

    old = os.umask(0o027)
    umask.cache_clear()
    try:
        paths = [write_text(tmp_path / "a.txt", "x"), save_torch(tmp_path / "b.pt", {"a": 1}),
                 write_nifti(tmp_path / "c.nii.gz", np.zeros((2, 2, 2)), np.eye(4))]
    finally:
        os.umask(old)
        umask.cache_clear()
    assert [oct(p.stat().st_mode & 0o777) for p in paths] == [oct(0o640)] * 3
