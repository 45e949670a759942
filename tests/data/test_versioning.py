"""DVC data versions against real remotes (a local folder, and SeaweedFS S3 with enforced credentials) and real
git: track (add, push, commit) then materialise by revision into fresh folders, byte for byte."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from difiisr.data.fingerprint import dataset_md5
from difiisr.data.versioning import (
    DataVersion,
    DataVersionError,
    DataVersionNotFoundError,
    materialize,
    pull,
    read_version,
    track,
)
from difiisr.errors import DifiisrError, ExitCode
from difiisr.io import write_image


def _data(ws: Path, name: str = "frames", n: int = 3, seed: int = 0) -> dict[str, bytes]:
    """8-bit and 16-bit frames, one in a nested folder; returns {relative path: bytes}."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_image(ws / name / f"f{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    write_image(ws / name / "deep" / "t16.png", rng.integers(0, 65535, (8, 8), dtype=np.uint16))
    return _files(ws / name)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def _forget_local_copies(ws: Path, name: str = "frames") -> None:
    """Delete the data and DVC's local cache: whatever comes back must come from the remote."""
    shutil.rmtree(ws / name)
    shutil.rmtree(ws / ".dvc" / "cache", ignore_errors=True)


def test_track_pins_a_commit_and_materialize_fetches_that_version_back(tmp_path: Path) -> None:
    ws, remote = tmp_path / "ws", tmp_path / "remote"
    before = _data(ws)
    (v1,) = track(ws, ["frames"], str(remote))
    assert v1.path == "frames" and v1.remote == str(remote.resolve())
    assert v1.n_files == 4 and v1.n_bytes == sum(len(b) for b in before.values())
    # the identity is DVC's: the .dvc file in the pinned commit names the same md5 as dataset_md5
    pinned = yaml.safe_load(_git(ws, "show", f"{v1.rev}:frames.dvc"))["outs"][0]
    assert pinned["md5"] == f"{v1.md5}.dir" and v1.md5 == dataset_md5(ws / "frames")
    assert len(v1.rev) == 40 and _git(ws, "rev-parse", "HEAD").strip() == v1.rev
    assert read_version(ws, "frames") == v1
    assert any(p.is_file() for p in remote.rglob("*"))  # the remote holds the objects

    # a second version of the same folder: new md5, new commit
    write_image(ws / "frames" / "f0.png", np.full((16, 16), 7, np.uint8))
    (v2,) = track(ws, ["frames"], str(remote))
    assert v2.md5 != v1.md5 and v2.rev != v1.rev
    after = _files(ws / "frames")

    # from a model version's tags (md5 + rev + path): the exact data comes back from the remote
    _forget_local_copies(ws)
    got1 = materialize(ws, "frames", v1.rev, tmp_path / "out1")
    assert got1 == v1 and _files(tmp_path / "out1") == before
    assert dataset_md5(tmp_path / "out1") == v1.md5
    got2 = materialize(ws, "frames", v2.rev[:10], tmp_path / "out2")  # any git revision spelling
    assert got2.rev == v2.rev and got2.md5 == v2.md5 and _files(tmp_path / "out2") == after
    # nothing else is left beside the destinations (temporary folders are gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out1", "out2", "remote", "ws"]


def test_materialize_is_a_no_op_when_dest_holds_the_md5_and_refuses_other_data(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    _data(ws)
    (v,) = track(ws, ["frames"], str(tmp_path / "remote"))
    dest = tmp_path / "dest"
    materialize(ws, "frames", v.rev, dest)
    inode = (dest / "f0.png").stat().st_ino
    _forget_local_copies(ws)
    shutil.rmtree(tmp_path / "remote")  # a rerun needs neither the cache nor the remote
    assert materialize(ws, "frames", v.rev, dest) == v
    assert (dest / "f0.png").stat().st_ino == inode

    other = tmp_path / "other"
    write_image(other / "x.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataVersionError, match=rf"other exists and holds md5 \w+, not {v.md5}"):
        materialize(ws, "frames", v.rev, other)
    assert _files(other).keys() == {"x.png"}  # untouched


def test_replace_swaps_in_the_version(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    before = _data(ws)
    (v,) = track(ws, ["frames"], str(tmp_path / "remote"))
    other = tmp_path / "other"
    write_image(other / "x.png", np.zeros((4, 4), np.uint8))
    assert materialize(ws, "frames", v.rev, other, replace=True).md5 == v.md5
    assert _files(other) == before


def test_working_tree_version_has_no_rev(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    before = _data(ws)
    (v,) = track(ws, ["frames"], str(tmp_path / "remote"))
    got = materialize(ws, "frames", None, tmp_path / "wt")
    assert got == DataVersion("frames", None, v.md5, v.n_files, v.n_bytes, v.remote)
    assert _files(tmp_path / "wt") == before


def test_missing_rev_path_or_remote_data_are_named(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    _data(ws)
    (v,) = track(ws, ["frames"], str(tmp_path / "remote"))
    with pytest.raises(
        DataVersionNotFoundError, match=r"'frames' at rev 0123abc.*unknown Git revision"
    ) as err:
        materialize(ws, "frames", "0123abc", tmp_path / "a")
    assert isinstance(err.value, DifiisrError) and err.value.exit_code == ExitCode.USAGE
    with pytest.raises(DataVersionNotFoundError, match=rf"'nope' at rev {v.rev}.*no such path"):
        materialize(ws, "nope", v.rev, tmp_path / "b")
    empty = tmp_path / "empty-remote"
    empty.mkdir()
    _forget_local_copies(ws)
    with pytest.raises(
        DataVersionNotFoundError, match=rf"at rev {v.rev}.*remote {empty}.*does not hold the data"
    ):
        materialize(ws, "frames", v.rev, tmp_path / "c", remote=str(empty))
    assert not (tmp_path / "c").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-remote", "remote", "ws"]
    # the configured remote still has it
    assert materialize(ws, "frames", v.rev, tmp_path / "c").md5 == v.md5


def test_remote_override_reads_a_copy_of_the_remote(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    before = _data(ws)
    (v,) = track(ws, ["frames"], str(tmp_path / "remote"))
    shutil.move(tmp_path / "remote", tmp_path / "moved")
    _forget_local_copies(ws)
    got = materialize(ws, "frames", v.rev, tmp_path / "out", remote=str(tmp_path / "moved"))
    assert got.remote == str(tmp_path / "moved") and _files(tmp_path / "out") == before


def test_pull_restores_folders(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    before = _data(ws)
    track(ws, ["frames"], str(tmp_path / "remote"))
    _forget_local_copies(ws)
    pull(ws, ["frames"])
    assert _files(ws / "frames") == before


@pytest.mark.services
def test_s3_remote_on_seaweedfs(tmp_path: Path, seaweedfs, monkeypatch: pytest.MonkeyPatch) -> None:
    env = seaweedfs.client_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bucket = seaweedfs.make_bucket("dvc-test")
    ws = tmp_path / "ws"
    before = _data(ws, seed=1)
    (v,) = track(ws, ["frames"], f"s3://{bucket}/demo")
    assert v.remote == f"s3://{bucket}/demo"
    keys = [o["Key"] for o in seaweedfs.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys and all(k.startswith("demo/") for k in keys)
    # the endpoint lives only in the git-ignored config.local; no credential is written anywhere
    committed = _git(ws, "show", f"{v.rev}:.dvc/config")
    assert f"s3://{bucket}/demo" in committed and seaweedfs.endpoint_url not in committed
    assert seaweedfs.endpoint_url in (ws / ".dvc" / "config.local").read_text()
    assert ".dvc/config.local" not in _git(ws, "ls-files")
    for path in ws.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            text = path.read_bytes()
            assert env["AWS_SECRET_ACCESS_KEY"].encode() not in text, path
            assert env["AWS_ACCESS_KEY_ID"].encode() not in text, path

    # a fresh clone (no cache, no config.local): the endpoint comes from AWS_ENDPOINT_URL
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(ws), str(clone))
    got = materialize(clone, "frames", v.rev, tmp_path / "out")
    assert got == v and _files(tmp_path / "out") == before

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(DataVersionError, match=rf"at rev {v.rev}.*s3://{bucket}/demo.*download failed"):
        materialize(clone, "frames", v.rev, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    (ws / "frames" / "new.png").write_bytes((ws / "frames" / "f0.png").read_bytes()[::-1])
    with pytest.raises(DataVersionError, match="dvc push"):
        track(ws, ["frames"])
    assert _git(ws, "rev-parse", "HEAD").strip() == v.rev  # nothing committed without a successful push


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataVersionNotFoundError, match="nope: not a folder"):
        track(tmp_path / "a", ["nope"], str(tmp_path / "remote"))
    with pytest.raises(DataVersionNotFoundError, match="not inside the workspace"):
        track(tmp_path / "ws", [tmp_path / "elsewhere"], str(tmp_path / "remote"))


def test_workspace_inside_another_repository_is_refused_unless_ignored(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("outputs/\n")
    _data(tmp_path / "sub")
    with pytest.raises(DataVersionError, match=rf"lies inside the git repository {tmp_path}"):
        track(tmp_path / "sub", ["frames"], str(tmp_path / "remote"))
    before = _data(tmp_path / "outputs" / "ws")
    (v,) = track(tmp_path / "outputs" / "ws", ["frames"], str(tmp_path / "remote"))
    assert (tmp_path / "outputs" / "ws" / ".git").is_dir() and len(v.rev) == 40
    assert _files(tmp_path / "outputs" / "ws" / "frames") == before


def test_data_version_dict_round_trip() -> None:
    v = DataVersion("hr/train", "a" * 40, "b" * 32, 3, 1234, "s3://b/p")
    assert DataVersion.from_dict(v.to_dict()) == v
    assert v.to_dict() == {
        "path": "hr/train", "rev": "a" * 40, "md5": "b" * 32, "n_files": 3, "n_bytes": 1234, "remote": "s3://b/p",
    }  # fmt: skip
    assert DataVersion.from_dict({**v.to_dict(), "rev": None, "remote": ""}).rev is None


def test_cli_versions_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from difiisr.cli.main import main

    _data(tmp_path / "ws")
    argv = ["version-data", "--workspace", str(tmp_path / "ws"), "--remote", str(tmp_path / "r")]
    assert main([*argv, "frames"]) == ExitCode.OK
    out = capsys.readouterr().out
    rev = _git(tmp_path / "ws", "rev-parse", "HEAD").strip()
    md5 = dataset_md5(tmp_path / "ws" / "frames")
    assert out.startswith(f"versioned frames at rev {rev}: md5 {md5}, 4 files")
    assert main([*argv, "none"]) == ExitCode.USAGE
    assert "not a folder" in capsys.readouterr().out
