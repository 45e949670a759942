"""MLflow tracking for training runs, through an explicit ``MlflowClient`` (no global MLflow state is touched).

The tracking server is whatever ``MLFLOW_TRACKING_URI`` says when ``train()`` runs; unset, a SQLite file
``mlflow.db`` in the working directory. Only the main process creates a tracker. The run id is kept in
``OUT_DIR/mlflow_run.json`` so a resumed run continues the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from difiisr.storage import atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
RUN_RECORD = "mlflow_run.json"
_MAX_PARAM_CHARS = 6000
_BATCH = 100


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` from the environment, else ``sqlite:///mlflow.db`` (in the working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def code_version() -> str:
    """Git commit of the package source (``SHA`` or ``SHA-dirty``) when it is a git checkout, else the version."""
    from difiisr import __version__

    src = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    if not sha:
        return __version__
    return f"{sha}-dirty" if dirty else sha


class NullTracker:
    """Tracker that records nothing (MLflow disabled, or a non-main process)."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Do nothing."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Do nothing."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Do nothing."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Do nothing."""

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Do nothing."""

    def finish(self, status: str = "FINISHED") -> None:
        """Do nothing."""


class MlflowTracker(NullTracker):
    """One MLflow run written through ``MlflowClient(tracking_uri)``."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(
        cls,
        experiment: str,
        run_name: str | None,
        out_dir: str | Path,
        *,
        resume: bool,
        uri: str | None = None,
        parent_run_id: str | None = None,
    ) -> MlflowTracker:
        """Create (or, when resuming, reopen) the run for ``out_dir`` in ``experiment`` at ``uri``.

        ``parent_run_id``: create the run as a child of that run (MLflow's ``mlflow.parentRunId`` tag).
        """
        from mlflow import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        uri = uri or tracking_uri()
        client = MlflowClient(tracking_uri=uri)
        record = Path(out_dir) / RUN_RECORD
        if resume and record.is_file():
            saved = json.loads(record.read_text(encoding="utf-8"))
            if saved.get("tracking_uri") == uri:
                run_id = saved["run_id"]
                client.update_run(run_id, status="RUNNING")
                log.info("MLflow: continuing run %s at %s", run_id, uri)
                return cls(client, run_id)
            log.warning(
                "MLflow: %s records a run at %s but MLFLOW_TRACKING_URI is %s; starting a new run",
                record,
                saved.get("tracking_uri"),
                uri,
            )
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
        tags = {MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else None
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        payload = {"tracking_uri": uri, "experiment_id": experiment_id, "run_id": run_id}
        atomic_write_text(record, json.dumps(payload, indent=2) + "\n")
        log.info("MLflow: run %s in experiment %r at %s", run_id, experiment, uri)
        return cls(client, run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params not yet on the run (values as strings); changed values on a resumed run are only warned."""
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        fresh = []
        for key, value in params.items():
            text = "null" if value is None else str(value)
            text = text[:_MAX_PARAM_CHARS]
            if key in existing:
                if existing[key] != text:
                    log.warning(
                        "MLflow: param %s was %r, now %r; keeping the first value", key, existing[key], text
                    )
                continue
            fresh.append(Param(key, text))
        for i in range(0, len(fresh), _BATCH):
            self.client.log_batch(self.run_id, params=fresh[i : i + _BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values as strings)."""
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at ``step`` (one batch call)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload one file under ``artifact_path``."""
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Upload a folder's files under ``artifact_path``."""
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED`` (preempted; a resume reopens it)."""
        self.client.set_terminated(self.run_id, status=status)
