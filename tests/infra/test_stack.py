"""The local service stack (infra/local/stack.py) and the service fixtures (tests/services.py), for real:
SeaweedFS and MLflow run on 127.0.0.1; nothing is mocked."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
from botocore.exceptions import ClientError
from stack import (
    ARTIFACT_BUCKET,
    Credentials,
    ManagedProcess,
    SeaweedFS,
    StackConfig,
    StackError,
    free_ports,
    load_or_create_credentials,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "infra" / "local" / "stack.py"


def _alive(pid: int) -> bool:
    """True when ``pid`` is a live process (a zombie awaiting its parent's reap counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """The PIDs still alive after waiting up to ``timeout`` s for them to be gone."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


# --------------------------------------------------------------------------------- S3 (SeaweedFS)


@pytest.mark.services
def test_s3_put_get_list_with_credentials(seaweedfs: SeaweedFS) -> None:
    bucket = seaweedfs.make_bucket(f"put-get-{uuid.uuid4().hex[:8]}")
    assert seaweedfs.make_bucket(bucket) == bucket  # idempotent
    client = seaweedfs.client()
    body = os.urandom(70_000)
    client.put_object(Bucket=bucket, Key="a/b/data.bin", Body=body)
    assert client.get_object(Bucket=bucket, Key="a/b/data.bin")["Body"].read() == body
    listed = client.list_objects_v2(Bucket=bucket, Prefix="a/")
    assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [("a/b/data.bin", 70_000)]
    assert seaweedfs.endpoint_url.startswith("http://127.0.0.1:")
    assert {b["Name"] for b in client.list_buckets()["Buckets"]} >= {bucket, ARTIFACT_BUCKET}


@pytest.mark.services
def test_s3_refuses_wrong_and_missing_credentials(seaweedfs: SeaweedFS) -> None:
    bucket = seaweedfs.make_bucket("refusals")
    seaweedfs.client().put_object(Bucket=bucket, Key="secret.txt", Body=b"x")
    cases = {
        "SignatureDoesNotMatch": seaweedfs.client(secret_key="not-the-secret-" + "0" * 26),
        "InvalidAccessKeyId": seaweedfs.client(access_key="DIFIISRWRONGKEY00000"),
    }
    for code, client in cases.items():
        with pytest.raises(ClientError) as err:
            client.get_object(Bucket=bucket, Key="secret.txt")
        assert err.value.response["Error"]["Code"] == code
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        with pytest.raises(ClientError):
            client.list_buckets()
    # anonymous HTTP: no credentials at all
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(f"{seaweedfs.endpoint_url}/{bucket}/secret.txt", timeout=10)
    assert http_err.value.code == 403


# ----------------------------------------------------------------------------------------- MLflow


@pytest.mark.services
def test_mlflow_health(mlflow_server) -> None:
    with urllib.request.urlopen(f"{mlflow_server.tracking_uri}/health", timeout=10) as resp:
        assert resp.status == 200
        assert resp.read().strip() == b"OK"
    assert mlflow_server.tracking_uri.startswith("http://127.0.0.1:")


@pytest.mark.services
def test_mlflow_artifact_lands_in_the_s3_bucket(mlflow_env, seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    import mlflow

    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_env.tracking_uri
    content = f"artifact {uuid.uuid4()}".encode()
    (tmp_path / "note.txt").write_bytes(content)
    experiment_id = mlflow.create_experiment(f"stack-test-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_param("p", 1)
        mlflow.log_artifact(str(tmp_path / "note.txt"), artifact_path="notes")
    # the client sees only the server's proxy; the bytes are in the S3 bucket behind it
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    key = f"mlartifacts/{experiment_id}/{run.info.run_id}/artifacts/notes/note.txt"
    got = seaweedfs.client().get_object(Bucket=ARTIFACT_BUCKET, Key=key)["Body"].read()
    assert got == content
    assert mlflow.get_run(run.info.run_id).data.params == {"p": "1"}


@pytest.mark.services
def test_mlflow_env_points_clients_at_the_server(mlflow_env, monkeypatch: pytest.MonkeyPatch) -> None:
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_env.tracking_uri
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    import mlflow

    assert mlflow.get_tracking_uri() == mlflow_env.tracking_uri


# ---------------------------------------------------------------------------- credentials, processes


def test_credentials_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "root" / "credentials.env"
    first = load_or_create_credentials(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.access_key) == 20 and len(first.secret_key) == 40
    assert load_or_create_credentials(path) == first  # read back, not regenerated
    assert Credentials.generate() != first  # random
    text = path.read_text()
    assert f"AWS_ACCESS_KEY_ID={first.access_key}\n" in text
    assert f"AWS_SECRET_ACCESS_KEY={first.secret_key}\n" in text
    os.chmod(path, 0o644)
    load_or_create_credentials(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tightened again


def test_credentials_file_without_a_key_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "credentials.env"
    path.write_text("AWS_ACCESS_KEY_ID=abc\n")
    with pytest.raises(StackError, match=r"credentials\.env lacks AWS_SECRET_ACCESS_KEY: delete the file"):
        load_or_create_credentials(path)


def test_stack_config_from_env_and_flags(tmp_path: Path) -> None:
    env = {"DIFIISR_STACK_ROOT": str(tmp_path), "DIFIISR_S3_PORT": "18333", "DIFIISR_MLFLOW_PORT": "15000"}
    assert StackConfig.from_env(env) == StackConfig(root=tmp_path.resolve(), s3_port=18333, mlflow_port=15000)
    assert StackConfig.from_env(env, s3_port=9000, mlflow_port=None).s3_port == 9000  # a flag beats the env
    assert StackConfig.from_env({}).s3_port == 8333 and StackConfig.from_env({}).mlflow_port == 5000
    with pytest.raises(StackError, match="DIFIISR_S3_PORT='x' is not a port number"):
        StackConfig.from_env({"DIFIISR_S3_PORT": "x"})


def test_port_in_use_is_refused_before_starting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = SeaweedFS(tmp_path, Credentials.generate(), s3_port=port)
        with pytest.raises(StackError, match=rf"port {port} on 127\.0\.0\.1 is already in use: .*--s3-port"):
            server.start()
    assert server.process.record() is None  # nothing was started


def test_stop_sigkills_exactly_its_process_group(tmp_path: Path) -> None:
    # a server that ignores SIGTERM and has a child: stop() must escalate to SIGKILL of its group only
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = ManagedProcess("stubborn", tmp_path / "run" / "stubborn.pid", tmp_path / "logs" / "stubborn.log")
    record = proc.start([sys.executable, "-c", script], dict(os.environ), {}, cwd=tmp_path)
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 20
        while len(proc.group()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        members = sorted(p.pid for p in proc.group())
        assert len(members) == 2 and record.pid in members
        stopped = proc.stop(timeout=1.0)
        assert sorted(stopped) == members
        assert _wait_gone(members) == []
        assert not proc.pid_file.exists()
        assert _alive(bystander.pid)  # another process group is never signalled
        assert proc.stop() == []  # stopping again is a no-op
    finally:
        bystander.kill()
        bystander.wait()


def test_a_stale_pid_file_never_signals_a_recycled_pid(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        proc = ManagedProcess("stale", tmp_path / "stale.pid", tmp_path / "stale.log")
        # the PID file names a live PID, but with another start time: it is not our server
        proc.pid_file.write_text(
            f'{{"pid": {other.pid}, "create_time": 1.0, "argv": ["x"], "log": "x", "ports": {{}}}}'
        )
        assert proc.leader() is None
        assert proc.group() == []
        assert proc.stop() == []
        assert _alive(other.pid)
    finally:
        other.kill()
        other.wait()


def test_a_server_that_dies_at_start_reports_its_log_tail(tmp_path: Path) -> None:
    proc = ManagedProcess("broken", tmp_path / "broken.pid", tmp_path / "broken.log")
    proc.start(
        [sys.executable, "-c", "print('cannot open the data folder', flush=True); raise SystemExit(3)"],
        dict(os.environ),
        {},
        cwd=tmp_path,
    )
    with pytest.raises(
        StackError, match=r"(?s)broken exited \(code 3\) before health.*cannot open the data folder"
    ):
        wait_until(proc, lambda: False, timeout=30, what="health")


# ------------------------------------------------------------------------------- the CLI, end to end


def _stack_cli(*args: str, root: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFIISR_", "AWS_", "MLFLOW_"))}
    return subprocess.run(
        [sys.executable, str(STACK), *args, "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.mark.services
@pytest.mark.slow
def test_cli_up_status_env_down_leaves_no_process(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    s3_port, mlflow_port = free_ports(2)
    ports = ("--s3-port", str(s3_port), "--mlflow-port", str(mlflow_port))
    up = _stack_cli("up", *ports, root=root)
    try:
        assert up.returncode == 0, up.stderr
        creds = load_or_create_credentials(root / "credentials.env")
        exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines())
        assert exports == {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "AWS_ACCESS_KEY_ID": creds.access_key,
            "AWS_SECRET_ACCESS_KEY": creds.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        assert stat.S_IMODE((root / "credentials.env").stat().st_mode) == 0o600

        status = _stack_cli("status", root=root)
        assert status.returncode == 0, status.stdout + status.stderr
        lines = status.stdout.splitlines()
        assert lines[0].startswith("seaweedfs  running, healthy") and f"127.0.0.1:{s3_port}" in lines[0]
        assert lines[1].startswith("mlflow     running, healthy") and f"127.0.0.1:{mlflow_port}" in lines[1]
        pids = [int(p) for line in lines for p in line.split(" pids ")[1].split()]
        assert len(pids) >= 2

        # everything listens on 127.0.0.1 only
        listening = [
            c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.pid in pids
        ]
        assert {c.laddr.port for c in listening} >= {s3_port, mlflow_port}
        assert {c.laddr.ip for c in listening} == {"127.0.0.1"}

        # `up` again adopts the running servers instead of starting new ones
        again = _stack_cli("up", *ports, root=root)
        assert again.returncode == 0 and again.stdout == up.stdout
        assert _stack_cli("env", root=root).stdout == up.stdout
        weed_ports = json.loads((root / "run" / "seaweedfs.pid").read_text())["ports"]
    finally:
        down = _stack_cli("down", root=root)
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("mlflow: stopped ") and "seaweedfs: stopped " in down.stdout
    assert _wait_gone(pids) == []
    assert sorted((root / "run").glob("*.pid")) == [] and sorted((root / "run").glob("*.sock")) == []
    assert [p for p in weed_ports.values() if list(Path("/tmp").glob(f"seaweedfs-*-{p}.sock"))] == []
    after = _stack_cli("status", root=root)
    assert after.returncode == 3
    assert "seaweedfs  stopped" in after.stdout and "mlflow     stopped" in after.stdout
    assert _stack_cli("down", root=root).stdout == "mlflow: was not running\nseaweedfs: was not running\n"
