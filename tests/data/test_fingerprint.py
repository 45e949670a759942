"""dataset_md5: closed form for one file, invariance to location/mtime/hidden files, sensitivity to bytes/names."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from difiisr.data.fingerprint import dataset_md5


def test_single_file_closed_form(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"abc")
    expected = hashlib.md5(b"a.png\x003\x00abc").hexdigest()
    assert dataset_md5(tmp_path) == expected


def test_invariant_to_location_mtime_and_hidden_files(tmp_path: Path) -> None:
    src = tmp_path / "one"
    (src / "hr").mkdir(parents=True)
    (src / "hr" / "x.png").write_bytes(b"1234")
    (src / "manifest.jsonl").write_text("{}\n")
    digest = dataset_md5(src)
    copy = tmp_path / "two"
    shutil.copytree(src, copy)
    os.utime(copy / "hr" / "x.png", (1, 1))
    (copy / ".DS_Store").write_bytes(b"junk")
    (copy / ".dvc").mkdir()
    (copy / ".dvc" / "cache").write_bytes(b"junk")
    assert dataset_md5(copy) == digest


def test_changes_with_bytes_and_names(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"1234")
    digest = dataset_md5(tmp_path)
    (tmp_path / "x.png").write_bytes(b"1235")
    changed = dataset_md5(tmp_path)
    assert changed != digest
    (tmp_path / "x.png").rename(tmp_path / "y.png")
    assert dataset_md5(tmp_path) not in (digest, changed)


def test_missing_folder_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope: dataset folder not found"):
        dataset_md5(tmp_path / "nope")
