"""The local service stack on 127.0.0.1: SeaweedFS S3 with enforced credentials, and an MLflow tracking
server whose artifacts are proxied to that S3. One implementation serves ``make stack-up`` /
``stack-down`` / ``stack-status``, ``python -m difiisr.stack up|down|status|env`` and the pytest fixtures.

Modules: ``process`` (process groups, PID files, foreground runs), ``credentials`` (the 0600 key file),
``seaweedfs`` and ``mlflow_server`` (one server each), ``local`` (both under one root), ``cli``.
Importing this package starts nothing and imports neither torch, MLflow nor boto3.
"""

from difiisr.stack.credentials import CREDENTIALS_FILE, Credentials, load_or_create_credentials
from difiisr.stack.errors import StackConfigError, StackError
from difiisr.stack.local import DEFAULT_BUCKETS, LocalStack, ServiceStatus, StackConfig
from difiisr.stack.mlflow_server import ARTIFACT_BUCKET, MLflowServer
from difiisr.stack.ports import HOST, free_ports, port_in_use
from difiisr.stack.process import ManagedProcess, PidRecord, wait_until
from difiisr.stack.seaweedfs import SeaweedFS

__all__ = [
    "ARTIFACT_BUCKET",
    "CREDENTIALS_FILE",
    "DEFAULT_BUCKETS",
    "HOST",
    "Credentials",
    "LocalStack",
    "MLflowServer",
    "ManagedProcess",
    "PidRecord",
    "SeaweedFS",
    "ServiceStatus",
    "StackConfig",
    "StackConfigError",
    "StackError",
    "free_ports",
    "load_or_create_credentials",
    "port_in_use",
    "wait_until",
]
