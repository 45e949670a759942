"""Real local services for tests: SeaweedFS S3 and an MLflow tracking server on 127.0.0.1, free ports.

A pytest plugin (tests/conftest.py: ``pytest_plugins = ["services"]``; ``tests/`` is on the import path
through the ``pythonpath`` option in pyproject.toml). The servers are the classes of the ``difiisr.stack``
package, the same code as ``make stack-up``; each starts once per session on first use, under a temporary
root, and is stopped at the end of the session by its PID file (process group), so no process is left
behind. A start that fails raises ``difiisr.stack.StackError`` with the server's log tail.

Fixtures:
- ``seaweedfs`` (session): ``endpoint_url``, ``access_key``, ``secret_key``, ``region``, ``client()`` (boto3
  S3 client), ``make_bucket(name)``; credentials are random and enforced.
- ``mlflow_server`` (session): ``tracking_uri`` (``http://127.0.0.1:PORT``), SQLite backend store, artifacts
  proxied to ``s3://difiisr-mlflow/mlartifacts`` on the ``seaweedfs`` server.
- ``mlflow_env`` (function): sets ``MLFLOW_TRACKING_URI`` (and clears variables that would redirect the
  client) with monkeypatch; yields the ``mlflow_server`` object; ends a run a test left open.
- ``s3_env`` (function): sets ``AWS_ENDPOINT_URL`` and the credentials of ``seaweedfs`` with monkeypatch (what
  ``difiisr.storage`` reads); yields the ``seaweedfs`` object.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from difiisr.stack import ARTIFACT_BUCKET, Credentials, MLflowServer, SeaweedFS

# Variables that would point an MLflow client elsewhere than the test server.
_MLFLOW_CLIENT_VARS = (
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_RUN_ID",
)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A SeaweedFS S3 server on a free 127.0.0.1 port with random, enforced credentials."""
    server = SeaweedFS(
        tmp_path_factory.mktemp("seaweedfs"), Credentials.generate(), s3_port=0, buckets=(ARTIFACT_BUCKET,)
    )
    server.start(timeout=90)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, seaweedfs: SeaweedFS) -> Iterator[MLflowServer]:
    """An MLflow tracking server on a free 127.0.0.1 port, SQLite backend, artifacts proxied to ``seaweedfs``."""
    server = MLflowServer(tmp_path_factory.mktemp("mlflow"), seaweedfs, port=0)
    server.start(timeout=240)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_env(mlflow_server: MLflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MLflowServer]:
    """Point MLflow clients in this test at ``mlflow_server`` (env restored afterwards); yields the server."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in _MLFLOW_CLIENT_VARS:
        monkeypatch.delenv(name, raising=False)
    yield mlflow_server
    if "mlflow" in sys.modules:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.end_run()


@pytest.fixture
def s3_env(seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedFS]:
    """Point S3 clients built from the ``AWS_*`` environment at ``seaweedfs`` (env restored afterwards)."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for name, value in seaweedfs.client_env().items():
        monkeypatch.setenv(name, value)
    yield seaweedfs
