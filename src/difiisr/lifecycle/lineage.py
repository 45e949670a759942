"""MLflow lineage of a pipeline run: one parent run per pipeline run, one child run per step.

The parent run is found by its Kubeflow Pipelines run id (tag ``kfp.run_id``), so every step of one pipeline
run, a retried step, and the pipeline's exit handler all get the same parent without passing state around. A
child run is found by its parent and its step name, so a retried step continues its child run instead of
leaving a failed one behind. Everything goes through an explicit ``MlflowClient`` at ``MLFLOW_TRACKING_URI``
(no global MLflow state is touched); runs nest in the MLflow UI through MLflow's ``mlflow.parentRunId`` tag.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from difiisr.errors import DifiisrError, ExitCode
from difiisr.registry.names import (
    LINEAGE_DATA_TAG_PREFIX,
    LINEAGE_TAG_KFP_ERROR,
    LINEAGE_TAG_KFP_RUN_ID,
    LINEAGE_TAG_KFP_STATE,
    LINEAGE_TAG_PIPELINE,
    LINEAGE_TAG_ROLE,
    LINEAGE_TAG_STEP,
    RUN_TAG_CODE_VERSION,
)
from difiisr.training.tracking import MlflowTracker, code_version, tracking_uri

log = logging.getLogger(__name__)

ROLE_PIPELINE = "pipeline"
ROLE_STEP = "step"
# Kubeflow's final task states -> MLflow run statuses (anything else counts as FAILED).
_FINAL_STATUS = {"SUCCEEDED": "FINISHED", "CANCELED": "KILLED", "CANCELLED": "KILLED"}


class LineageError(DifiisrError):
    """The lineage runs cannot be found or written; the message names the run, the tracking URI and the fix."""

    exit_code = ExitCode.JOB_FAILED


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """One child run of a pipeline run: step name, run id, MLflow status, tags, latest metrics, artifact root."""

    step: str
    run_id: str
    status: str
    tags: dict[str, str]
    metrics: dict[str, float]
    artifact_uri: str


def _client(client: Any | None) -> Any:
    if client is not None:
        return client
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def _quote(value: str) -> str:
    """``value`` as a single-quoted MLflow search literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _experiment_id(client: Any, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return str(found.experiment_id)
    from mlflow.exceptions import MlflowException

    try:
        return str(client.create_experiment(experiment))
    except MlflowException:  # created concurrently by another step
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return str(found.experiment_id)


def _first_run(client: Any, experiment: str, where: str, order: str) -> str | None:
    """Id of the first run of ``experiment`` matching the MLflow filter ``where`` in ``order``; None if none."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string=where, order_by=[order], max_results=1)
    return runs[0].info.run_id if runs else None


def find_pipeline_run(experiment: str, kfp_run_id: str, *, client: Any | None = None) -> str | None:
    """The parent run of KFP run ``kfp_run_id`` in ``experiment``, or None if no step has created it yet."""
    where = (
        f"tags.`{LINEAGE_TAG_KFP_RUN_ID}` = {_quote(kfp_run_id)} "
        f"and tags.`{LINEAGE_TAG_ROLE}` = {_quote(ROLE_PIPELINE)}"
    )
    return _first_run(_client(client), experiment, where, "attributes.start_time ASC")


def pipeline_run(
    experiment: str,
    kfp_run_id: str,
    *,
    pipeline: str,
    tags: Mapping[str, Any] | None = None,
    client: Any | None = None,
) -> str:
    """The parent run of KFP run ``kfp_run_id`` (created on first use, tagged with the run id and code version).

    ``tags`` are added to the run either way (e.g. the dataset's DVC identity). Returns the MLflow run id.
    """
    if not kfp_run_id:
        raise LineageError(
            "the pipeline run id is empty; pass dsl.PIPELINE_JOB_ID_PLACEHOLDER to the step's kfp_run_id input"
        )
    c = _client(client)
    run_id = find_pipeline_run(experiment, kfp_run_id, client=c)
    if run_id is None:
        experiment_id = _experiment_id(c, experiment)
        run = c.create_run(
            experiment_id,
            run_name=f"{pipeline} {kfp_run_id}",
            tags={
                LINEAGE_TAG_ROLE: ROLE_PIPELINE,
                LINEAGE_TAG_PIPELINE: pipeline,
                LINEAGE_TAG_KFP_RUN_ID: kfp_run_id,
                RUN_TAG_CODE_VERSION: code_version(),
            },
        )
        run_id = run.info.run_id
        log.info("MLflow: pipeline run %s (KFP run %s) in experiment %r", run_id, kfp_run_id, experiment)
    if tags:
        MlflowTracker(c, run_id).set_tags(tags)
    return run_id


def _child_of(client: Any, parent: Any, step: str) -> str | None:
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = {_quote(parent.info.run_id)} "
        f"and tags.`{LINEAGE_TAG_STEP}` = {_quote(step)}",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _parent(client: Any, parent_run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(parent_run_id)
    except MlflowException as exc:
        raise LineageError(
            f"pipeline run {parent_run_id!r} not found at {tracking_uri()} ({exc.message}); every step of a "
            "pipeline run must use the same MLFLOW_TRACKING_URI"
        ) from None


def _step_tags(parent: Any, step: str) -> dict[str, str]:
    """Tags of a child run: its parent, role and step, and the parent's KFP run id and data identity."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    return {
        **{k: v for k, v in parent.data.tags.items() if k.startswith(LINEAGE_DATA_TAG_PREFIX)},
        MLFLOW_PARENT_RUN_ID: parent.info.run_id,
        LINEAGE_TAG_ROLE: ROLE_STEP,
        LINEAGE_TAG_STEP: step,
        LINEAGE_TAG_KFP_RUN_ID: parent.data.tags.get(LINEAGE_TAG_KFP_RUN_ID, ""),
    }


def start_step_run(parent_run_id: str, step: str, *, client: Any | None = None) -> MlflowTracker:
    """The child run of ``step`` under ``parent_run_id`` (created, or reopened when the step is retried)."""
    c = _client(client)
    parent = _parent(c, parent_run_id)
    run_id = _child_of(c, parent, step)
    if run_id is None:
        tags = {**_step_tags(parent, step), RUN_TAG_CODE_VERSION: code_version()}
        run_id = c.create_run(parent.info.experiment_id, run_name=step, tags=tags).info.run_id
    else:
        c.update_run(run_id, status="RUNNING")
        log.info("MLflow: step %s continues its run %s", step, run_id)
    return MlflowTracker(c, run_id)


@contextlib.contextmanager
def step_run(parent_run_id: str, step: str, *, client: Any | None = None) -> Iterator[MlflowTracker]:
    """Open the child run of ``step``; it ends FINISHED, or FAILED (KILLED on Ctrl-C) when the body raises."""
    tracker = start_step_run(parent_run_id, step, client=client)
    try:
        yield tracker
    except BaseException as exc:
        tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    tracker.finish("FINISHED")


def mark_step(run_id: str, parent_run_id: str, step: str, *, client: Any | None = None) -> None:
    """Tag a run created elsewhere (the training run) as the child run of ``step`` under ``parent_run_id``."""
    c = _client(client)
    MlflowTracker(c, run_id).set_tags(_step_tags(_parent(c, parent_run_id), step))


def close_pipeline_run(
    experiment: str,
    kfp_run_id: str,
    *,
    state: str,
    error: str = "",
    pipeline: str,
    client: Any | None = None,
) -> str:
    """End the parent run with the pipeline's final ``state`` (KFP: SUCCEEDED, FAILED, CANCELED).

    Creates the parent when no step got that far (a run that failed in its first step still leaves a record).
    Returns the parent run id.
    """
    c = _client(client)
    run_id = pipeline_run(experiment, kfp_run_id, pipeline=pipeline, client=c)
    status = _FINAL_STATUS.get(state.upper(), "FAILED")
    tags = {LINEAGE_TAG_KFP_STATE: state}
    if error:
        tags[LINEAGE_TAG_KFP_ERROR] = error[:5000]
    tracker = MlflowTracker(c, run_id)
    tracker.set_tags(tags)
    tracker.finish(status)
    log.info("MLflow: pipeline run %s ended %s (KFP state %s)", run_id, status, state)
    return run_id


def step_runs(parent_run_id: str, *, client: Any | None = None) -> list[StepRecord]:
    """The child runs of a pipeline run, oldest first."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    c = _client(client)
    parent = _parent(c, parent_run_id)
    runs = c.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = {_quote(parent_run_id)}",
        order_by=["attributes.start_time ASC"],
    )
    return [
        StepRecord(
            step=r.data.tags.get(LINEAGE_TAG_STEP, r.info.run_name or ""),
            run_id=r.info.run_id,
            status=r.info.status,
            tags=dict(r.data.tags),
            metrics=dict(r.data.metrics),
            artifact_uri=r.info.artifact_uri,
        )
        for r in runs
    ]


def latest_pipeline_run(
    experiment: str, pipeline: str, *, since_ms: int = 0, client: Any | None = None
) -> str | None:
    """The newest parent run of ``pipeline`` in ``experiment`` started at or after ``since_ms`` (epoch ms)."""
    where = (
        f"tags.`{LINEAGE_TAG_ROLE}` = {_quote(ROLE_PIPELINE)} and tags.`{LINEAGE_TAG_PIPELINE}` = {_quote(pipeline)} "
        f"and attributes.start_time >= {int(since_ms)}"
    )
    return _first_run(_client(client), experiment, where, "attributes.start_time DESC")
