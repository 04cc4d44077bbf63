"""Atomic writes: the old file or the new one, never half of it, with a plain file's permissions."""

from __future__ import annotations

import os

import pytest

from rsrefseg.io import atomic_open, atomic_write_text


def test_written_file_has_the_permissions_of_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "metrics.md", "| a |\n")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "best.ckpt", "old")
    with pytest.raises(RuntimeError), atomic_open(path) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]
