"""Atomic writes: the target appears complete or not at all, files get the umask's mode, stale temp files go."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from difiisr.io import write_image
from difiisr.storage import (
    STALE_AFTER_S,
    atomic,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    is_temp_file,
    remove_stale_temp_files,
)


def test_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


# ----------------------------------------------------------------------------------------- permissions


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_mode_of_the_umask(tmp_path: Path, umask, mask: int, mode: int) -> None:
    """As open() would: 0666 less the umask (mkstemp gave 0600 whatever the umask)."""
    umask(mask)
    written = [
        atomic_write_text(tmp_path / "report.json", "{}"),
        atomic_write_bytes(tmp_path / "sub" / "data.bin", b"x"),
        write_image(tmp_path / "img.png", np.zeros((4, 4), np.uint8)),
    ]
    with atomic_path(tmp_path / "weights.safetensors") as tmp:
        tmp.write_bytes(b"w")  # a writer that opens the temp path by name (torch.save, safetensors)
    written.append(tmp_path / "weights.safetensors")
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    # replacing an existing file gives the same mode as a new one
    umask(0o022)
    atomic_write_text(tmp_path / "report.json", "{}")
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o644


# ------------------------------------------------------------------------------------- stale temp files


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    return int(proc.stdout)


def _temp(folder: Path, pid: int, host: str | None = None, stem: str = "a", suffix: str = ".png") -> Path:
    host = host or atomic._host_tag()
    path = folder / f".{stem}.tmp-{pid}-{host}-abcd1234{suffix}"
    path.write_bytes(b"partial")
    return path


def test_temp_names_record_the_writer_and_are_recognised(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "frame.png") as tmp:
        match = re.fullmatch(r"\.frame\.tmp-(\d+)-([0-9a-f]{8})-[0-9a-z]{8}\.png", tmp.name)
        assert match and int(match[1]) == os.getpid() and match[2] == atomic._host_tag()
        assert is_temp_file(tmp) and tmp.is_file()
    assert not is_temp_file(tmp_path / "frame.png")
    assert not is_temp_file(tmp_path / ".hidden.png") and not is_temp_file(tmp_path / "a.tmp-1-x-y.png")
    assert is_temp_file(tmp_path / ".frame.k2j4_x9a.tmp.png")  # mkstemp name of earlier versions


def test_remove_stale_temp_files_keeps_live_writers_and_other_files(tmp_path: Path) -> None:
    now = time.time()
    dead = _temp(tmp_path, _dead_pid(), stem="dead")
    live = _temp(tmp_path, os.getpid(), stem="live")
    foreign = _temp(tmp_path, 1, host="0badf00d", stem="foreign")  # another host: only age tells
    old_foreign = _temp(tmp_path, 1, host="0badf00d", stem="oldforeign")
    os.utime(old_foreign, (now - STALE_AFTER_S - 60, now - STALE_AFTER_S - 60))
    # our own PID, but the file was last written before this process started: a previous process (a restarted
    # container reuses small PIDs) left it
    reused = _temp(tmp_path, os.getpid(), stem="reused")
    started = atomic._process_start_time(os.getpid())
    assert started is not None  # Linux /proc
    os.utime(reused, (started - 60, started - 60))
    legacy = tmp_path / ".frame.k2j4_x9a.tmp.png"
    legacy.write_bytes(b"x")
    old_legacy = tmp_path / ".frame.a1b2c3d4.tmp.png"
    old_legacy.write_bytes(b"x")
    os.utime(old_legacy, (now - STALE_AFTER_S - 60, now - STALE_AFTER_S - 60))
    others = [tmp_path / "frame.png", tmp_path / ".hidden.png", tmp_path / "notes.tmp.png"]
    for path in others:
        path.write_bytes(b"keep")

    removed = remove_stale_temp_files(tmp_path)
    assert sorted(removed) == sorted([dead, old_foreign, reused, old_legacy])
    assert all(p.exists() for p in [live, foreign, legacy, *others])
    assert remove_stale_temp_files(tmp_path) == []
    assert remove_stale_temp_files(tmp_path / "missing") == []
    # a bound of 0 s makes every temp file stale, live or not
    assert sorted(remove_stale_temp_files(tmp_path, max_age_s=0)) == sorted([live, foreign, legacy])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in others)
