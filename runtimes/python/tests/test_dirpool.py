"""DirPool: ready directories renamed into place, and every fallback."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kruntimes_runtime.dirpool import SPARE_DIRS, DirPool


def test_take_renames_a_ready_directory(tmp_path: Path) -> None:
    pool = DirPool(str(tmp_path), kept=2)
    pool.reset()
    pool.refill()
    assert len(os.listdir(tmp_path / SPARE_DIRS)) == 2
    target = tmp_path / "run-1"
    assert pool.take(str(target))
    st = os.lstat(target)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755 & ~_umask()
    assert os.listdir(target) == []
    assert len(os.listdir(tmp_path / SPARE_DIRS)) == 1
    pool.refill()
    assert len(os.listdir(tmp_path / SPARE_DIRS)) == 2


def test_take_leaves_an_existing_path_to_the_caller(tmp_path: Path) -> None:
    pool = DirPool(str(tmp_path), kept=1)
    pool.refill()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path)
    assert not pool.take(str(tmp_path / "taken"))
    assert not pool.take(str(tmp_path / "link"))
    assert (tmp_path / "taken" / "keep").read_text() == "x"
    assert os.path.islink(tmp_path / "link")
    assert len(os.listdir(tmp_path / SPARE_DIRS)) == 1  # still ready


def test_empty_or_removed_pool_falls_back(tmp_path: Path) -> None:
    pool = DirPool(str(tmp_path), kept=1)
    assert not pool.take(str(tmp_path / "a"))  # nothing ready yet
    pool.refill()
    pool.reset()  # e.g. another server cleared it
    assert not pool.take(str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()
    pool.refill()
    assert pool.take(str(tmp_path / "c"))
    pool.clear()
    assert not (tmp_path / SPARE_DIRS).exists()


def test_refill_is_best_effort(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    pool = DirPool(str(blocked), kept=2)  # its root is a file: mkdir fails
    pool.refill()
    assert not pool.take(str(tmp_path / "x"))


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
