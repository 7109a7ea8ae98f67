"""edged/files.py: a file is replaced whole or not at all."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edged.files import atomic_write_text


def test_the_file_is_replaced_with_its_mode_and_no_temporary_is_left(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    written = atomic_write_text(target, '{"new": true}', mode=0o600)
    assert target.read_text() == '{"new": true}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert (written.st_ino, written.st_size) == (target.stat().st_ino, target.stat().st_size)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    atomic_write_text(target, "third")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "half \ud800 written")  # a lone surrogate cannot be UTF-8
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
