"""data.io: names from files kept inside their folder; write failures as one clear error; file modes."""
from __future__ import annotations

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
