"""DVC data versions against real remotes: a local folder and the SeaweedFS S3 server (credentials enforced)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from difiisr.data.versioning import DataVersionError, init_workspace, pull, read_version, track
from difiisr.io import write_image


def _data(ws, name="frames", n=3, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_image(ws / name / f"f{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    return {p.name: p.read_bytes() for p in sorted((ws / name).iterdir())}


def _round_trip(ws, before):
    version = track(ws, ["frames"])[0]
    assert len(version.md5) == 36 and version.md5.endswith(".dir") and version.nfiles == 3
    assert read_version(ws, "frames") == version
    shutil.rmtree(ws / "frames")
    shutil.rmtree(ws / ".dvc" / "cache")
    pull(ws, ["frames"])
    assert {p.name: p.read_bytes() for p in sorted((ws / "frames").iterdir())} == before
    return version


def test_local_remote_round_trip_and_versions_change_with_data(tmp_path):
    ws = tmp_path / "ws"
    before = _data(ws)
    init_workspace(ws, str(tmp_path / "remote"))
    v1 = _round_trip(ws, before)
    assert any((tmp_path / "remote").rglob("*"))  # the remote holds the objects
    write_image(ws / "frames" / "f0.png", np.zeros((16, 16), np.uint8) + 7)
    v2 = track(ws, ["frames"])[0]
    assert v2.md5 != v1.md5


@pytest.mark.services
def test_s3_remote_on_seaweedfs(tmp_path, seaweedfs, monkeypatch):
    for key, value in seaweedfs.client_env().items():
        monkeypatch.setenv(key, value)
    bucket = seaweedfs.make_bucket("dvc-test")
    ws = tmp_path / "ws"
    before = _data(ws, seed=1)
    init_workspace(ws, f"s3://{bucket}/demo", endpoint_url=seaweedfs.endpoint_url)
    _round_trip(ws, before)
    keys = [o["Key"] for o in seaweedfs.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys and all(k.startswith("demo/") for k in keys)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    (ws / "frames" / "new.png").write_bytes((ws / "frames" / "f0.png").read_bytes()[::-1])
    with pytest.raises(DataVersionError, match="dvc push"):
        track(ws, ["frames"])


def test_missing_folder_is_named(tmp_path):
    init_workspace(tmp_path, str(tmp_path / "remote"))
    with pytest.raises(DataVersionError, match="nope: not a folder"):
        track(tmp_path, ["nope"])


def test_cli_versions_folders(tmp_path, capsys):
    from difiisr.cli.main import main

    _data(tmp_path / "ws")
    assert (
        main(["version-data", "--workspace", str(tmp_path / "ws"), "--remote", str(tmp_path / "r"), "frames"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("versioned frames: md5 ") and ".dir, 3 files" in out
    assert (
        main(["version-data", "--workspace", str(tmp_path / "ws"), "--remote", str(tmp_path / "r"), "none"])
        == 1
    )
    assert "not a folder" in capsys.readouterr().out
