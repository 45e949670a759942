"""The batch job (``difiisr batch-upscale`` / ``run_batch``) against a real SeaweedFS S3 on 127.0.0.1 and a tiny
model from a real MLflow registry.

Behaviour seen through the CLI (exit codes, SIGKILL, a server restart, refusals) runs the console script in a
subprocess; idempotence and sharding call ``run_batch`` in-process (the same function the CLI calls). The models
are randomly initialised tiny presets: the tests check plumbing and exactness, not image quality.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from difiisr.errors import ExitCode
from difiisr.inference.batch import BatchJob, run_batch
from difiisr.inference.batch_report import run_id
from difiisr.inference.settings import InferenceSettings
from difiisr.inference.upscaler import Upscaler
from difiisr.io import read_image, write_image
from difiisr.io.metadata import read_text_record, text_record_of_bytes
from difiisr.models.bundle import save_model_folder
from difiisr.models.preset import load_preset
from difiisr.registry.register import register_run
from difiisr.stack import Credentials, SeaweedFS

pytestmark = pytest.mark.services

EXE = str(Path(sys.executable).with_name("difiisr"))
CPU = ["--device", "cpu", "--no-progress"]


@dataclasses.dataclass(frozen=True)
class Registered:
    name: str
    folders: tuple[Path, Path]  # the model folders of versions 1 and 2
    digests: tuple[str, str]
    tracking_uri: str

    def set_alias(self, alias: str, version: int) -> None:
        MlflowClient(tracking_uri=self.tracking_uri).set_registered_model_alias(
            self.name, alias, str(version)
        )


@pytest.fixture(scope="module")
def registered(mlflow_server, tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """Two versions (different random weights) of one registered tiny model."""
    name = f"difiisr-batch-{uuid.uuid4().hex[:8]}"
    preset = load_preset("tiny")
    folders, digests = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
        for seed in (1, 2):
            ups = Upscaler.from_random(preset, seed=seed, device="cpu")
            folder = save_model_folder(tmp_path_factory.mktemp(f"model{seed}"), preset, ups.unet.state_dict())
            with mlflow.start_run() as run:  # shaped like `difiisr train` + `difiisr evaluate` leave a run
                mlflow.log_artifacts(str(folder), artifact_path="model_folder")
                mlflow.log_metrics({"eval/psnr_y": 30.0 + seed, "eval/bicubic_psnr_y": 28.0})
                mlflow.set_tags({"eval_md5": f"{seed}" * 32, "dataset.md5": "d" * 32})
            mv = register_run(run.info.run_id, name)
            assert str(mv.version) == str(seed)
            folders.append(folder)
            digests.append(ups.digest)
    return Registered(name, (folders[0], folders[1]), (digests[0], digests[1]), mlflow_server.tracking_uri)


def _grey(rng: np.random.Generator, shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    return rng.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def _upload_folder(client: Any, folder: Path, bucket: str, prefix: str) -> list[str]:
    keys = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = path.relative_to(folder).as_posix()
        client.put_object(Bucket=bucket, Key=prefix + key, Body=path.read_bytes())
        keys.append(key)
    return keys


def _objects(client: Any, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Every object under ``prefix`` (key relative to it -> listing entry)."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            out[obj["Key"][len(prefix) :]] = obj
    return out


def _images(objects: dict[str, Any]) -> set[str]:
    return {k for k in objects if not k.startswith("_reports/")}


def _read_object(client: Any, bucket: str, key: str, tmp: Path) -> tuple[Any, dict[str, str], dict[str, str]]:
    """(decoded image, object metadata, record embedded in the file) of one output object."""
    resp = client.get_object(Bucket=bucket, Key=key)
    data = resp["Body"].read()
    path = tmp / f"obj-{uuid.uuid4().hex}{Path(key).suffix}"
    path.write_bytes(data)
    return read_image(path), resp["Metadata"], text_record_of_bytes(data) or {}


def _env(seaweedfs: SeaweedFS, mlflow_server, tmp: Path) -> dict[str, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(seaweedfs.client_env())
    env.update(
        MLFLOW_TRACKING_URI=mlflow_server.tracking_uri,
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        TMPDIR=str(tmp),  # spool files of a killed run stay inside the test's folder
    )
    return env


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, "batch-upscale", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


def _report(client: Any, bucket: str, prefix: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Lines and summary of the newest run report under ``prefix/_reports/``."""
    names = sorted(k for k in _objects(client, bucket, prefix + "_reports/"))
    lines_key = [k for k in names if k.endswith(".jsonl")][-1]
    body = client.get_object(Bucket=bucket, Key=f"{prefix}_reports/{lines_key}")["Body"].read().decode()
    summary_key = lines_key.replace(".jsonl", ".summary.json")
    summary = json.loads(
        client.get_object(Bucket=bucket, Key=f"{prefix}_reports/{summary_key}")["Body"].read()
    )
    return [json.loads(line) for line in body.splitlines()], summary


# ---------------------------------------------------------------------------------------------- the CLI


def test_bad_inputs_fail_alone_outputs_keep_depth_and_form(
    registered: Registered, seaweedfs: SeaweedFS, mlflow_server, tmp_path: Path
) -> None:
    client = seaweedfs.client()
    bucket = seaweedfs.make_bucket(f"bt-{uuid.uuid4().hex[:10]}")
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    write_image(src / "g8.png", _grey(rng, (12, 16)))
    write_image(src / "g16.png", _grey(rng, (10, 12), np.uint16))
    write_image(src / "t16.tif", _grey(rng, (8, 8), np.uint16))
    write_image(src / "rgb.png", _grey(rng, (8, 12, 3)))
    write_image(src / "day2" / "c.jpg", _grey(rng, (8, 8, 3)))
    whole = (src / "g8.png").read_bytes()
    (src / "corrupt.png").write_bytes(whole[: len(whole) // 2])  # truncated inside the pixel data
    (src / "empty.png").write_bytes(b"")
    (src / "text.png").write_text("this is not an image\n")
    (src / "notes.txt").write_text("ignored: not an image extension\n")
    _upload_folder(client, src, bucket, "in/")
    registered.set_alias("champion", 1)

    proc = _cli(
        ["--model", f"models:/{registered.name}@champion", "--input", f"s3://{bucket}/in",
         "--output", f"s3://{bucket}/out", "--tile", "8", "--tile-overlap", "2", "--batch", "3", *CPU],
        _env(seaweedfs, mlflow_server, tmp_path / "tmp"), tmp_path,
    )  # fmt: skip
    assert proc.returncode == ExitCode.FAILURES, proc.stderr
    assert (
        "5 done, 0 skipped, 3 failed of 8 input(s)" in proc.stdout and "1 other key(s) ignored" in proc.stdout
    )
    assert "3 input(s) failed; reasons in s3://" in proc.stderr

    objects = _objects(client, bucket, "out/")
    assert _images(objects) == {"g8.png", "g16.png", "t16.tif", "rgb.png", "day2/c.png"}
    expected = {
        "g8.png": ((48, 64), np.uint8),
        "g16.png": ((40, 48), np.uint16),
        "t16.tif": ((32, 32), np.uint16),
        "rgb.png": ((32, 48, 3), np.uint8),
        "day2/c.png": ((32, 32, 3), np.uint8),
    }
    for key, (shape, dtype) in expected.items():
        image, metadata, embedded = _read_object(client, bucket, f"out/{key}", tmp_path)
        assert image.pixels.shape == shape and image.pixels.dtype == dtype, key
        assert metadata == embedded, key  # the same record in the object metadata and inside the file
        assert metadata["model.version"] == f"{registered.name}/1"
        assert metadata["model"] == f"models:/{registered.name}/1"  # the alias pinned to its version
        assert metadata["model.digest"] == registered.digests[0]
        assert metadata["inference.digest"] == InferenceSettings(tile=8, tile_overlap=2).digest()
    # the pixels are the model's: the same as the Upscaler gives in-process with the same settings
    ups = Upscaler.from_folder(registered.folders[0], device="cpu")
    want = ups.upscale_array(read_image(src / "g16.png").pixels, InferenceSettings(tile=8, tile_overlap=2))
    assert np.array_equal(_read_object(client, bucket, "out/g16.png", tmp_path)[0].pixels, want)

    lines, summary = _report(client, bucket, "out/")
    by_key = {line["key"]: line for line in lines}
    inputs = {"g8.png", "g16.png", "t16.tif", "rgb.png", "day2/c.jpg", "corrupt.png", "empty.png", "text.png"}
    assert len(lines) == 8 and set(by_key) == inputs
    assert {k for k, v in by_key.items() if v["status"] == "failed"} == {
        "corrupt.png",
        "empty.png",
        "text.png",
    }
    assert "empty file (0 bytes)" in by_key["empty.png"]["reason"]
    assert "not a recognised image file" in by_key["text.png"]["reason"]
    assert "truncated or corrupt" in by_key["corrupt.png"]["reason"]
    assert all(line["model_version"] == f"{registered.name}/1" for line in lines)
    assert (
        by_key["g16.png"]["bit_depth"] == 16 and by_key["g16.png"]["output"] == f"s3://{bucket}/out/g16.png"
    )
    assert set(by_key["g8.png"]["seconds"]) == {"read", "upscale", "write", "total"}
    assert summary["counts"] == {"done": 5, "skipped": 0, "failed": 3, "total": 8, "ignored": 1}
    assert summary["exit_code"] == ExitCode.FAILURES and summary["model"]["version"] == f"{registered.name}/1"


def test_overlap_and_storage_errors_stop_before_any_work(
    registered: Registered, seaweedfs: SeaweedFS, mlflow_server, tmp_path: Path
) -> None:
    bucket = seaweedfs.make_bucket(f"bt-{uuid.uuid4().hex[:10]}")
    seaweedfs.client().put_object(Bucket=bucket, Key="in/a.png", Body=b"x")
    env = _env(seaweedfs, mlflow_server, tmp_path / "tmp")
    model = ["--model", f"models:/{registered.name}/1"]
    inside = _cli(
        [*model, "--input", f"s3://{bucket}/in", "--output", f"s3://{bucket}/in/sr", *CPU], env, tmp_path
    )
    assert inside.returncode == ExitCode.USAGE
    assert f"--output s3://{bucket}/in/sr/ lies inside the input s3://{bucket}/in/" in inside.stderr
    missing = _cli(
        [*model, "--input", "s3://no-such-bucket-b/in", "--output", f"s3://{bucket}/o", *CPU], env, tmp_path
    )
    assert missing.returncode == ExitCode.JOB_FAILED
    assert "bucket 'no-such-bucket-b' does not exist" in missing.stderr and "create it" in missing.stderr
    denied = _cli(
        [*model, "--input", f"s3://{bucket}/in", "--output", f"s3://{bucket}/o", *CPU],
        {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"},
        tmp_path,
    )
    assert denied.returncode == ExitCode.JOB_FAILED and "refused the credentials" in denied.stderr
    assert "Traceback" not in missing.stderr + denied.stderr + inside.stderr
    assert _objects(seaweedfs.client(), bucket, "o/") == {}


def _start(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [EXE, "batch-upscale", *args], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=cwd,
        start_new_session=True,
    )  # fmt: skip


def _wait_for_outputs(count: Any, at_least: int, proc: subprocess.Popen[bytes], timeout: float = 300) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = count()
        if n >= at_least:
            return n
        assert proc.poll() is None, "the job ended before it wrote any output"
        time.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} outputs after {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["s3", "local"])
def test_sigkill_mid_run_then_rerun_gives_exactly_one_complete_output_each(
    kind: str, registered: Registered, seaweedfs: SeaweedFS, mlflow_server, tmp_path: Path
) -> None:
    client = seaweedfs.client()
    bucket = seaweedfs.make_bucket(f"bt-{uuid.uuid4().hex[:10]}")
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    n = 24
    for i in range(n):
        write_image(src / f"cam{i % 3}" / f"f{i:02d}.png", _grey(rng, (16, 16)))
    keys = _upload_folder(client, src, bucket, "in/")
    expected = set(keys)
    if kind == "s3":
        inp, out = f"s3://{bucket}/in", f"s3://{bucket}/out"

        def outputs() -> set[str]:
            return _images(_objects(client, bucket, "out/"))
    else:
        inp, out = str(src), str(tmp_path / "out")

        def outputs() -> set[str]:
            root = tmp_path / "out"
            return {p.relative_to(root).as_posix() for p in root.rglob("*.png") if not p.name.startswith(".")}

    env = _env(seaweedfs, mlflow_server, tmp_path / "tmp")
    # ddim runs the tiny model's 4 steps: slow enough that the kill lands mid-run
    args = [
        "--model",
        f"models:/{registered.name}/1",
        "--input",
        inp,
        "--output",
        out,
        "--sampler",
        "ddim",
        *CPU,
    ]
    proc = _start(args, env, tmp_path, tmp_path / "first.log")
    try:
        _wait_for_outputs(lambda: len(outputs()), 2, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(1.0)  # a PUT whose bytes all reached the server before the kill may still be completing there
    before = outputs()
    assert 2 <= len(before) < n, "the kill must land mid-run"

    again = _cli(args, env, tmp_path)
    assert again.returncode == ExitCode.OK, again.stderr
    assert f"done, {len(before)} skipped, 0 failed of {n} input(s)" in again.stdout
    assert outputs() == expected  # one output per input: nothing missing, nothing extra or duplicated
    for key in sorted(expected):  # every output complete and made by this model
        if kind == "s3":
            image, metadata, embedded = _read_object(client, bucket, f"out/{key}", tmp_path)
            assert metadata == embedded and metadata["model.digest"] == registered.digests[0]
        else:
            image = read_image(tmp_path / "out" / key)
            assert read_text_record(tmp_path / "out" / key)["model.digest"] == registered.digests[0]
        assert image.pixels.shape == (64, 64), key
    if kind == "s3":
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    else:  # the killed run's temp files were removed by the rerun, and never counted as outputs
        leftovers = [p for p in (tmp_path / "out").rglob(".*") if p.is_file()]
        assert leftovers == []


@pytest.mark.slow
def test_s3_restart_during_a_run_is_retried_and_nothing_is_lost(
    registered: Registered, mlflow_server, tmp_path: Path
) -> None:
    # its own S3 server, so that restarting it disturbs neither MLflow's artifact store nor other tests
    server = SeaweedFS(tmp_path / "s3", Credentials.generate(), s3_port=0, buckets=("restart-data",))
    server.start(timeout=120)
    try:
        client = server.client()
        rng = np.random.default_rng(2)
        src = tmp_path / "src"
        n = 16
        for i in range(n):
            write_image(src / f"f{i:02d}.png", _grey(rng, (16, 16)))
        _upload_folder(client, src, "restart-data", "in/")
        args = ["--model", f"models:/{registered.name}/1", "--input", "s3://restart-data/in",
                "--output", "s3://restart-data/out", "--sampler", "ddim", *CPU]  # fmt: skip
        log = tmp_path / "job.log"
        proc = _start(args, _env(server, mlflow_server, tmp_path / "tmp"), tmp_path, log)
        try:
            _wait_for_outputs(lambda: len(_images(_objects(client, "restart-data", "out/"))), 1, proc)
            before = len(_images(_objects(client, "restart-data", "out/")))
            server.stop()
            time.sleep(3.0)  # the job keeps working and its storage calls fail meanwhile
            assert proc.poll() is None, "the job must still be running while the server is down"
            server.start(timeout=120)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        text = log.read_text()
        assert proc.returncode == ExitCode.OK, text[-3000:]
        assert before < n, "the restart must land mid-run"
        assert "transient error" in text  # the outage was met and retried
        assert f"{n} done, 0 skipped, 0 failed of {n} input(s)" in text
        objects = _objects(client, "restart-data", "out/")
        assert _images(objects) == {f"f{i:02d}.png" for i in range(n)}
        for key in _images(objects):
            image, metadata, _ = _read_object(client, "restart-data", f"out/{key}", tmp_path)
            assert image.pixels.shape == (64, 64) and metadata["model.digest"] == registered.digests[0]
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------- the job


@pytest.fixture
def job_env(registered: Registered, s3_env, mlflow_env) -> Registered:
    """The registered model, with MLflow and S3 clients of this process pointed at the test servers."""
    return registered


def _inputs(seaweedfs: SeaweedFS, tmp_path: Path, n: int) -> str:
    bucket = seaweedfs.make_bucket(f"bt-{uuid.uuid4().hex[:10]}")
    rng = np.random.default_rng(3)
    for i in range(n):
        write_image(tmp_path / "src" / f"d{i % 2}" / f"f{i:02d}.png", _grey(rng, (8, 8)))
    _upload_folder(seaweedfs.client(), tmp_path / "src", bucket, "in/")
    return bucket


def test_rerun_skips_everything_and_a_new_model_version_redoes_everything(
    job_env: Registered, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    client = seaweedfs.client()
    bucket = _inputs(seaweedfs, tmp_path, 6)
    alias = f"nightly-{uuid.uuid4().hex[:6]}"
    job_env.set_alias(alias, 1)
    job = BatchJob(f"models:/{job_env.name}@{alias}", f"s3://{bucket}/in", f"s3://{bucket}/out",
                   device="cpu", progress=False)  # fmt: skip

    first = run_batch(job)
    assert (first.done, first.skipped, first.failed, first.exit_code) == (6, 0, 0, ExitCode.OK)
    etags = {k: v["ETag"] for k, v in _objects(client, bucket, "out/").items() if not k.startswith("_")}

    again = run_batch(job)
    assert (again.done, again.skipped, again.failed) == (0, 6, 0)
    assert {
        k: v["ETag"] for k, v in _objects(client, bucket, "out/").items() if not k.startswith("_")
    } == etags
    lines, _ = _report(client, bucket, "out/")
    assert {line["status"] for line in lines} == {"skipped"}

    job_env.set_alias(alias, 2)  # a new champion: every output is redone with it
    redo = run_batch(job)
    assert (redo.done, redo.skipped, redo.failed) == (6, 0, 0) and redo.model_version == f"{job_env.name}/2"
    lines, summary = _report(client, bucket, "out/")
    assert all(line["reason"].startswith("redone: model ") for line in lines)
    for key in etags:
        metadata = client.head_object(Bucket=bucket, Key=f"out/{key}")["Metadata"]
        assert metadata["model.version"] == f"{job_env.name}/2"
        assert metadata["model.digest"] == job_env.digests[1]
    assert summary["model"] == {"uri": f"models:/{job_env.name}/2", "version": f"{job_env.name}/2",
                                "digest": job_env.digests[1]}  # fmt: skip

    other_seed = run_batch(dataclasses.replace(job, settings=InferenceSettings(seed=7)))
    assert (other_seed.done, other_seed.skipped) == (6, 0)  # other settings: redone too
    assert run_batch(dataclasses.replace(job, settings=InferenceSettings(seed=7, batch=4))).skipped == 6


def test_shards_cover_every_input_exactly_once(
    job_env: Registered, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    client = seaweedfs.client()
    bucket = _inputs(seaweedfs, tmp_path, 14)
    base = BatchJob(f"models:/{job_env.name}/1", f"s3://{bucket}/in", f"s3://{bucket}/out",
                    device="cpu", progress=False)  # fmt: skip
    summaries = [run_batch(dataclasses.replace(base, shard=(i, 3))) for i in range(3)]
    done: list[str] = []
    for summary in summaries:
        body = client.get_object(Bucket=bucket, Key=summary.report_uri.split(f"s3://{bucket}/", 1)[1])["Body"]
        done += [json.loads(line)["key"] for line in body.read().decode().splitlines()]
        assert summary.failed == 0 and summary.skipped == 0
    all_keys = sorted(_images(_objects(client, bucket, "in/")))
    assert sorted(done) == all_keys and len(set(done)) == len(done) == 14  # each input by exactly one shard
    assert len({s.report_uri for s in summaries}) == 3  # one report per shard, none overwritten
    assert sorted(_images(_objects(client, bucket, "out/"))) == all_keys
    whole = run_batch(base)
    assert (whole.done, whole.skipped) == (0, 14)


def test_two_inputs_with_one_output_name_do_not_overwrite_each_other(
    registered: Registered, tmp_path: Path
) -> None:
    """``a.jpg`` and ``a.png`` both map to ``a.png``: the first listed makes it, the other fails with a reason, on
    every run (local folders and a model folder: no service involved)."""
    rng = np.random.default_rng(4)
    write_image(tmp_path / "in" / "a.jpg", _grey(rng, (8, 8)))
    write_image(tmp_path / "in" / "a.png", _grey(rng, (8, 8)))
    job = BatchJob(str(registered.folders[0]), str(tmp_path / "in"), str(tmp_path / "out"), device="cpu",
                   progress=False)  # fmt: skip
    for run in range(2):
        summary = run_batch(job)
        assert (summary.done + summary.skipped, summary.failed) == (1, 1), run
        assert summary.exit_code == ExitCode.FAILURES
        lines = [json.loads(x) for x in Path(summary.report_uri).read_text().splitlines()]
        (failed,) = [x for x in lines if x["status"] == "failed"]
        assert failed["key"] == "a.png" and "a.jpg is also written to" in failed["reason"]
        assert read_text_record(tmp_path / "out" / "a.png")["source"] == "a.jpg"


def test_run_ids_sort_by_start_time_even_within_one_second() -> None:
    # reports are found by name order ("the newest run"): ids made in the same second must still sort in order
    ids = [run_id("1/4") for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all("-shard-1-of-4-" in name for name in ids)
