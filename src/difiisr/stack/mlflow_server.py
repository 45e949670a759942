"""The tracking server of the local stack: ``mlflow server`` on 127.0.0.1, artifacts proxied to SeaweedFS S3.

Nothing here imports MLflow: the server is a child process started as ``python -m mlflow server``.
"""

from __future__ import annotations

import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path

from difiisr.stack.errors import StackConfigError
from difiisr.stack.ports import HOST, free_ports, port_in_use
from difiisr.stack.process import ManagedProcess, clean_env, wait_until
from difiisr.stack.seaweedfs import SeaweedFS

LOG = logging.getLogger(__name__)

DEFAULT_MLFLOW_PORT = 5000
ENV_MLFLOW_PORT = "DIFIISR_MLFLOW_PORT"
#: The bucket that holds MLflow's artifacts (under ``mlartifacts/``).
ARTIFACT_BUCKET = "difiisr-mlflow"


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
            raise StackConfigError(
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
            **clean_env(),
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
