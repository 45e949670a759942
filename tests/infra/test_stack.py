"""The local service stack (the difiisr.stack package, `python -m difiisr.stack`) and the service fixtures
(tests/services.py), for real: SeaweedFS and MLflow run on 127.0.0.1; nothing is mocked."""

from __future__ import annotations

import json
import os
import signal
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

from difiisr.errors import DifiisrError, ExitCode
from difiisr.stack import (
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


def test_stack_errors_are_difiisr_errors_with_the_shared_exit_codes(tmp_path: Path) -> None:
    with pytest.raises(StackError) as config_err:
        StackConfig.from_env({"DIFIISR_MLFLOW_PORT": "five"})
    assert isinstance(config_err.value, DifiisrError) and config_err.value.exit_code == ExitCode.USAGE
    (tmp_path / "credentials.env").write_text("AWS_SECRET_ACCESS_KEY=x\n")
    with pytest.raises(StackError) as job_err:
        load_or_create_credentials(tmp_path / "credentials.env")
    assert isinstance(job_err.value, (DifiisrError, RuntimeError))
    assert job_err.value.exit_code == ExitCode.JOB_FAILED


def test_credentials_repr_hides_the_secret() -> None:
    creds = Credentials.generate()
    assert creds.secret_key not in repr(creds) and creds.access_key in repr(creds)


def test_importing_the_stack_imports_no_torch_mlflow_or_boto3() -> None:
    code = (
        "import sys, difiisr.stack, difiisr.stack.cli, difiisr.stack.__main__\n"
        "print(sorted(m for m in ('torch', 'mlflow', 'boto3', 'botocore') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


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


_FOREGROUND_SERVER = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
def stop(signum, frame):
    # leaves its child running (as a careless server would) and exits with a code of its own
    sys.exit(7)
signal.signal(signal.SIGINT, stop)
time.sleep(120)
"""


def test_run_foreground_forwards_sigint_returns_the_code_and_leaves_no_process(tmp_path: Path) -> None:
    """What `difiisr serve` relies on: a signal to the supervisor reaches the server's group, the server's
    exit code comes back, and a member the server left behind is stopped too."""
    runner = (
        "import os, sys\n"
        "from difiisr.stack.process import run_foreground\n"
        "print('supervisor', os.getpid(), flush=True)\n"
        f"sys.exit(run_foreground([sys.executable, '-c', {_FOREGROUND_SERVER!r}], dict(os.environ), "
        "stop_timeout=5.0, tick=0.1))\n"
    )
    log = tmp_path / "out.txt"
    with open(log, "w") as out:
        supervisor = subprocess.Popen([sys.executable, "-c", runner], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while len(log.read_text().split()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        words = log.read_text().split()
        grandchild = int(words[2])
        server = psutil.Process(grandchild).ppid()
        assert os.getpgid(server) == server != os.getpgid(supervisor.pid)  # its own process group
        supervisor.send_signal(signal.SIGINT)  # to the supervisor only, as Ctrl-C in its terminal would
        assert supervisor.wait(30) == 7, log.read_text()
        assert _wait_gone([server, grandchild]) == []
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


def test_run_foreground_reports_death_by_signal_as_128_plus_n(tmp_path: Path) -> None:
    from difiisr.stack.process import run_foreground

    code = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    assert run_foreground([sys.executable, "-c", code], dict(os.environ), tick=0.05) == 128 + signal.SIGTERM


# ------------------------------------------------------------------------------- the CLI, end to end


def _stack_cli(*args: str, root: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFIISR_", "AWS_", "MLFLOW_"))}
    return subprocess.run(
        [sys.executable, "-m", "difiisr.stack", *args, "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def _exports(stdout: str) -> dict[str, str]:
    """The variables of ``env``'s ``export KEY=VALUE`` lines."""
    return dict(line.removeprefix("export ").split("=", 1) for line in stdout.splitlines())


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
        env = _stack_cli("env", root=root)
        assert env.returncode == 0, env.stderr
        # the variables to export come from `env` (meant for eval); `up` says where they are, not what
        assert _exports(env.stdout) == {
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            "AWS_ACCESS_KEY_ID": creds.access_key,
            "AWS_SECRET_ACCESS_KEY": creds.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        assert f"http://127.0.0.1:{mlflow_port}" in up.stdout and f"http://127.0.0.1:{s3_port}" in up.stdout
        assert str(root / "credentials.env") in up.stdout
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
        assert _stack_cli("env", root=root).stdout == env.stdout
        weed_ports = json.loads((root / "run" / "seaweedfs.pid").read_text())["ports"]
    finally:
        down = _stack_cli("down", root=root)
    assert down.returncode == 0, down.stderr
    assert down.stdout.startswith("mlflow: stopped ") and "seaweedfs: stopped " in down.stdout
    assert _wait_gone(pids) == []
    assert sorted((root / "run").glob("*.pid")) == [] and sorted((root / "run").glob("*.sock")) == []
    assert [p for p in weed_ports.values() if list(Path("/tmp").glob(f"seaweedfs-*-{p}.sock"))] == []
    after = _stack_cli("status", root=root)
    assert after.returncode == ExitCode.FAILURES  # a stopped stack is not healthy
    assert "seaweedfs  stopped" in after.stdout and "mlflow     stopped" in after.stdout
    assert _stack_cli("down", root=root).stdout == "mlflow: was not running\nseaweedfs: was not running\n"


@pytest.mark.services
@pytest.mark.slow
def test_up_and_status_print_no_secret_and_env_loads_into_a_shell(tmp_path: Path) -> None:
    """Regression (issue 9 item 2): `up` used to print `export AWS_SECRET_ACCESS_KEY=...` into CI logs."""
    root = tmp_path / "stack"
    s3_port, mlflow_port = free_ports(2)
    up = _stack_cli("up", "--s3-port", str(s3_port), "--mlflow-port", str(mlflow_port), root=root)
    try:
        assert up.returncode == 0, up.stderr
        creds_file = root / "credentials.env"
        assert stat.S_IMODE(creds_file.stat().st_mode) == 0o600
        creds = load_or_create_credentials(creds_file)
        status = _stack_cli("status", root=root)
        assert status.returncode == 0, status.stdout + status.stderr
        # what `up` prints: where the file is and the command that loads it (run with this Python)
        load = next(line.strip() for line in up.stdout.splitlines() if line.strip().startswith("eval "))
        assert load == f'eval "$({sys.executable} -m difiisr.stack env --root {root})"'
        assert f"{creds_file} (mode 0600" in up.stdout
        for text in (up.stdout, up.stderr, status.stdout, status.stderr):
            assert creds.secret_key not in text and "AWS_SECRET_ACCESS_KEY" not in text
        for log in (root / "logs").glob("*.log"):  # the servers' own logs and the PID files neither
            assert creds.secret_key not in log.read_text(errors="replace"), log
        for pid_file in (root / "run").glob("*.pid"):
            assert creds.secret_key not in pid_file.read_text(), pid_file

        # the printed command, run by a shell, loads variables that work: S3 with the enforced keys, MLflow
        client = (
            "import os, boto3, urllib.request\n"
            "s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n"
            "print(sorted(b['Name'] for b in s3.list_buckets()['Buckets']))\n"
            "print(urllib.request.urlopen(os.environ['MLFLOW_TRACKING_URI'] + '/health', timeout=10).status)\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DIFIISR_", "AWS_", "MLFLOW_"))}
        shell = subprocess.run(
            ["bash", "-c", f'{load} && exec {sys.executable} -c "$0"', client],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        assert shell.returncode == 0, shell.stderr
        assert shell.stdout.splitlines() == ["['difiisr-data', 'difiisr-dvc', 'difiisr-mlflow']", "200"]
        assert creds.secret_key not in shell.stderr  # `env`'s values go to the eval, not to the terminal
    finally:
        down = _stack_cli("down", root=root)
    assert down.returncode == 0, down.stderr
