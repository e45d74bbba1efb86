"""Atomic writes: all or nothing, with the permissions a plain write would give."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drivedistill.utils.io import atomic_write_json, atomic_write_text, atomic_write_with


def test_atomic_files_get_the_mode_of_a_plain_write(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        (tmp_path / "plain.txt").write_text("x")
        atomic_write_json(tmp_path / "results.json", {"a": 1})
        atomic_write_with(tmp_path / "w.bin", lambda p: p.write_bytes(b"1"))
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    mode = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert mode == 0o644
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == mode  # mkstemp alone gives 0600
    assert (tmp_path / "w.bin").stat().st_mode & 0o777 == mode
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600  # the umask still applies


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    atomic_write_json(target, {"old": True})

    def broken(p: Path) -> None:
        p.write_text('{"new": ')
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write_with(target, broken)
    assert target.read_text().strip().startswith('{\n  "old": true')
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
