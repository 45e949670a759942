"""The local stack: SeaweedFS S3 and an MLflow tracking server under one state folder, on 127.0.0.1.

Under ROOT (default ``./.difiisr``; ``--root`` or ``DIFIISR_STACK_ROOT``): ``credentials.env`` (S3 keys,
mode 0600), ``seaweedfs/`` and ``mlflow/`` (data, kept across restarts), ``logs/*.log`` and ``run/*.pid``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difiisr.stack.credentials import CREDENTIALS_FILE, Credentials, load_or_create_credentials
from difiisr.stack.errors import StackConfigError
from difiisr.stack.mlflow_server import ARTIFACT_BUCKET, DEFAULT_MLFLOW_PORT, ENV_MLFLOW_PORT, MLflowServer
from difiisr.stack.seaweedfs import DEFAULT_S3_PORT, ENV_S3_PORT, SeaweedFS

ENV_ROOT = "DIFIISR_STACK_ROOT"
#: Relative to the current directory (the Makefile runs from the repository root).
DEFAULT_ROOT = Path(".difiisr")
#: The artifact bucket, a DVC remote and a place for data/batch prefixes.
DEFAULT_BUCKETS: tuple[str, ...] = (ARTIFACT_BUCKET, "difiisr-dvc", "difiisr-data")


@dataclass(frozen=True)
class StackConfig:
    """Where the local stack keeps its files (made absolute) and which ports it serves on (127.0.0.1 only)."""

    root: Path = DEFAULT_ROOT
    s3_port: int = DEFAULT_S3_PORT
    mlflow_port: int = DEFAULT_MLFLOW_PORT
    buckets: tuple[str, ...] = DEFAULT_BUCKETS

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

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
                    raise StackConfigError(
                        f"{name}={env[name]!r} is not a port number: set it to e.g. 8333"
                    ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
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

    def services(self) -> tuple[SeaweedFS, MLflowServer]:
        """The two servers of this root (ports adopted from their PID files while they run)."""
        s3 = SeaweedFS(self.root, self.credentials, s3_port=self.config.s3_port, buckets=self.config.buckets)
        return s3, MLflowServer(self.root, s3, port=self.config.mlflow_port)

    def up(self, timeout: float = 180.0) -> tuple[SeaweedFS, MLflowServer]:
        """Start (or adopt) both servers and wait until they answer; returns them."""
        s3, mlflow = self.services()
        started_s3 = s3.process.leader() is None
        s3.start(timeout=min(timeout, 90.0))
        try:
            mlflow.start(timeout=timeout)
        except BaseException:
            if started_s3:
                s3.stop()
            raise
        return s3, mlflow

    def down(self, timeout: float = 15.0) -> dict[str, list[int]]:
        """Stop MLflow, then SeaweedFS, each by its PID file; returns the PIDs stopped per service."""
        s3, mlflow = self.services()
        return {"mlflow": mlflow.stop(timeout), "seaweedfs": s3.stop(timeout)}

    def status(self) -> list[ServiceStatus]:
        """Whether each service runs (by PID file) and answers its health check."""
        s3, mlflow = self.services()
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
        """What a client exports to use the stack: MLflow URI, S3 endpoints, credentials (secret included)."""
        if s3 is None or mlflow is None:
            s3, mlflow = self.services()
        return {
            "MLFLOW_TRACKING_URI": mlflow.tracking_uri,
            "AWS_ENDPOINT_URL": s3.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
            **self.credentials.as_env(),
        }
