"""dataset_md5 is DVC's directory md5: equal to what `dvc add` records (8/16-bit images, nested names, ignore
rules), closed form for one file, invariant to location/mtime, sensitive to bytes/names, cached in DVC's state."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dvc_data.hashfile.build as dvc_build
import numpy as np
import pytest
import yaml

from difiisr.data.fingerprint import DatasetNotFoundError, dataset_md5, dvc_dir_md5
from difiisr.errors import DifiisrError
from difiisr.io import write_image

DVC = str(Path(sys.executable).with_name("dvc"))


@pytest.fixture(autouse=True)
def _own_state_db(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """DVC's site cache (state db) of these tests in a temporary folder, for dvc subprocesses too."""
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path_factory.mktemp("dvc-site-cache")))


def _dvc(cwd: Path, *args: str) -> None:
    done = subprocess.run([DVC, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def _dvc_add_md5(repo: Path, rel: str) -> str:
    _dvc(repo, "add", "-q", rel)
    out = yaml.safe_load((repo / f"{rel}.dvc").read_text())["outs"][0]
    assert out["md5"].endswith(".dir")
    return out["md5"].removesuffix(".dir")


def _frames(folder: Path) -> None:
    rng = np.random.default_rng(0)
    write_image(folder / "a 8bit.png", rng.integers(0, 256, (12, 10), dtype=np.uint8))
    write_image(folder / "b16.png", rng.integers(0, 65536, (9, 7), dtype=np.uint16))
    write_image(folder / "hr" / "déjà vu.tif", rng.integers(0, 65536, (8, 8), dtype=np.uint16))
    write_image(
        folder / "lr" / "nested" / "deeper" / "c.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    )
    (folder / "manifest.jsonl").write_text('{"seed": 1}\n')


def test_equals_the_md5_dvc_add_records_in_and_outside_a_dvc_project(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "frames"
    _frames(outside)
    standalone = dataset_md5(outside)
    repo = tmp_path / "repo"
    repo.mkdir()
    _dvc(repo, "init", "-q", "--no-scm")
    shutil.copytree(outside, repo / "data" / "frames")
    assert dataset_md5(repo / "data" / "frames") == standalone  # before dvc add: hashed by difiisr first
    assert _dvc_add_md5(repo, "data/frames") == standalone
    md5, n_files, n_bytes = dvc_dir_md5(repo / "data" / "frames")
    out = yaml.safe_load((repo / "data" / "frames.dvc").read_text())["outs"][0]
    assert (md5, n_files, n_bytes) == (standalone, out["nfiles"], out["size"]) and n_files == 5


def test_follows_the_projects_dvcignore_like_dvc_add(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _dvc(repo, "init", "-q", "--no-scm")
    (repo / ".dvcignore").write_text("*.tmp\n")
    _frames(repo / "frames")
    (repo / "frames" / "scratch.tmp").write_bytes(b"partial write")
    in_project = dataset_md5(repo / "frames")
    assert _dvc_add_md5(repo, "frames") == in_project
    # the same folder outside the project has no ignore rule: the .tmp file counts there
    shutil.copytree(repo / "frames", tmp_path / "copy")
    assert dataset_md5(tmp_path / "copy") != in_project
    (tmp_path / "copy" / "scratch.tmp").unlink()
    assert dataset_md5(tmp_path / "copy") == in_project


def test_single_file_closed_form(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"abc")
    listing = [{"md5": hashlib.md5(b"abc").hexdigest(), "relpath": "a.png"}]
    expected = hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest()
    assert dataset_md5(tmp_path) == expected


def test_invariant_to_location_mtime_and_dvc_git_folders(tmp_path: Path) -> None:
    src = tmp_path / "one"
    (src / "hr").mkdir(parents=True)
    (src / "hr" / "x.png").write_bytes(b"1234")
    (src / "manifest.jsonl").write_text("{}\n")
    digest = dataset_md5(src)
    copy = tmp_path / "two"
    shutil.copytree(src, copy)
    os.utime(copy / "hr" / "x.png", (1, 1))
    (copy / ".dvc").mkdir()
    (copy / ".dvc" / "cache").write_bytes(b"junk")
    (copy / ".git").mkdir()
    (copy / ".git" / "HEAD").write_bytes(b"junk")
    assert dataset_md5(copy) == digest
    # every other file is data to DVC, hidden or not (a .DS_Store changes the version)
    (copy / ".DS_Store").write_bytes(b"junk")
    assert dataset_md5(copy) != digest


def test_changes_with_bytes_and_names(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"1234")
    digest = dataset_md5(tmp_path)
    (tmp_path / "x.png").write_bytes(b"1235")
    changed = dataset_md5(tmp_path)
    assert changed != digest
    (tmp_path / "x.png").rename(tmp_path / "y.png")
    assert dataset_md5(tmp_path) not in (digest, changed)


def test_missing_folder_message(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope: dataset folder not found") as err:
        dataset_md5(tmp_path / "nope")
    assert isinstance(err.value, DatasetNotFoundError) and isinstance(err.value, DifiisrError)


def _count_hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every file dvc_data hashes from its bytes (a state-db hit hashes nothing)."""
    hashed: list[str] = []
    real = dvc_build.hash_file

    def spy(path, *args, **kwargs):
        hashed.append(os.path.basename(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(dvc_build, "hash_file", spy)
    return hashed


def test_state_db_caches_file_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _frames(tmp_path / "frames")
    hashed = _count_hashed(monkeypatch)
    first = dataset_md5(tmp_path / "frames")
    assert len(hashed) == 5
    hashed.clear()
    assert dataset_md5(tmp_path / "frames") == first and hashed == []  # stats only
    (tmp_path / "frames" / "manifest.jsonl").write_text('{"seed": 2, "more": true}\n')
    assert dataset_md5(tmp_path / "frames") != first and hashed == ["manifest.jsonl"]


def test_shares_the_projects_state_db_with_dvc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _dvc(repo, "init", "-q", "--no-scm")
    _frames(repo / "frames")
    md5 = _dvc_add_md5(repo, "frames")
    hashed = _count_hashed(monkeypatch)
    assert dataset_md5(repo / "frames") == md5 and hashed == []  # `dvc add` already hashed every file
