"""MLflow lineage of a pipeline run (real MLflow, SQLite store in a temporary folder): one parent per KFP run,
one child per step, reused when a step is retried, closed with the pipeline's final state."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from difiisr.lifecycle import lineage
from difiisr.registry.names import (
    LINEAGE_TAG_DATA_MD5,
    LINEAGE_TAG_KFP_ERROR,
    LINEAGE_TAG_KFP_RUN_ID,
    LINEAGE_TAG_KFP_STATE,
    LINEAGE_TAG_PIPELINE,
    LINEAGE_TAG_ROLE,
    LINEAGE_TAG_STEP,
    RUN_TAG_CODE_VERSION,
)


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    c = MlflowClient(tracking_uri=uri)
    c.create_experiment("exp", artifact_location=(tmp_path / "artifacts").as_uri())
    return c


def test_one_parent_per_kfp_run(client: MlflowClient):
    first = lineage.pipeline_run("exp", "kfp-1", pipeline="difiisr-train-eval")
    again = lineage.pipeline_run(
        "exp", "kfp-1", pipeline="difiisr-train-eval", tags={LINEAGE_TAG_DATA_MD5: "abc"}
    )
    other = lineage.pipeline_run("exp", "kfp-2", pipeline="difiisr-train-eval")
    assert first == again != other
    tags = client.get_run(first).data.tags
    assert tags[LINEAGE_TAG_KFP_RUN_ID] == "kfp-1"
    assert tags[LINEAGE_TAG_ROLE] == "pipeline"
    assert tags[LINEAGE_TAG_PIPELINE] == "difiisr-train-eval"
    assert tags[LINEAGE_TAG_DATA_MD5] == "abc"
    assert tags[RUN_TAG_CODE_VERSION]
    assert lineage.find_pipeline_run("exp", "kfp-1") == first
    assert lineage.find_pipeline_run("exp", "kfp-3") is None
    assert lineage.find_pipeline_run("no-such-experiment", "kfp-1") is None


def test_new_experiment_is_created(client: MlflowClient):
    run_id = lineage.pipeline_run("fresh", "kfp-9", pipeline="p")
    assert client.get_run(run_id).info.experiment_id == client.get_experiment_by_name("fresh").experiment_id


def test_empty_kfp_run_id_is_refused(client: MlflowClient):
    with pytest.raises(lineage.LineageError, match="PIPELINE_JOB_ID_PLACEHOLDER"):
        lineage.pipeline_run("exp", "", pipeline="p")


def test_step_runs_nest_inherit_data_tags_and_are_reused_on_retry(client: MlflowClient):
    parent = lineage.pipeline_run("exp", "kfp-1", pipeline="p", tags={LINEAGE_TAG_DATA_MD5: "md5-x"})
    with pytest.raises(RuntimeError, match="storage hiccup"), lineage.step_run(parent, "register") as run:
        run.log_metrics({"attempt": 1}, step=0)
        raise RuntimeError("storage hiccup")
    first_id = run.run_id
    assert client.get_run(first_id).info.status == "FAILED"
    with lineage.step_run(parent, "register") as retry:  # the step's retry continues the same child run
        retry.log_metrics({"attempt": 2}, step=1)
    assert retry.run_id == first_id
    child = client.get_run(first_id)
    assert child.info.status == "FINISHED"
    assert child.data.tags[MLFLOW_PARENT_RUN_ID] == parent
    assert child.data.tags[LINEAGE_TAG_STEP] == "register"
    assert child.data.tags[LINEAGE_TAG_ROLE] == "step"
    assert child.data.tags[LINEAGE_TAG_KFP_RUN_ID] == "kfp-1"
    assert child.data.tags[LINEAGE_TAG_DATA_MD5] == "md5-x"
    assert [m.value for m in client.get_metric_history(first_id, "attempt")] == [1.0, 2.0]
    with lineage.step_run(parent, "promote"):
        pass
    records = lineage.step_runs(parent)
    assert [(r.step, r.status) for r in records] == [("register", "FINISHED"), ("promote", "FINISHED")]
    assert records[0].metrics == {"attempt": 2.0}
    assert records[0].artifact_uri.startswith("file:")


def test_a_run_made_elsewhere_becomes_a_step(client: MlflowClient):
    parent = lineage.pipeline_run("exp", "kfp-1", pipeline="p", tags={LINEAGE_TAG_DATA_MD5: "m"})
    exp_id = client.get_experiment_by_name("exp").experiment_id
    train_run = client.create_run(exp_id, run_name="train").info.run_id
    lineage.mark_step(train_run, parent, "train")
    assert [(r.step, r.run_id) for r in lineage.step_runs(parent)] == [("train", train_run)]
    assert client.get_run(train_run).data.tags[LINEAGE_TAG_DATA_MD5] == "m"


def test_missing_parent_is_a_clear_error(client: MlflowClient):
    with pytest.raises(lineage.LineageError, match="pipeline run 'deadbeef' not found at sqlite"):
        lineage.start_step_run("deadbeef", "train")


@pytest.mark.parametrize(
    ("state", "status"), [("SUCCEEDED", "FINISHED"), ("FAILED", "FAILED"), ("CANCELED", "KILLED")]
)
def test_close_maps_the_final_state(client: MlflowClient, state: str, status: str):
    parent = lineage.pipeline_run("exp", f"kfp-{state}", pipeline="p")
    closed = lineage.close_pipeline_run(
        "exp", f"kfp-{state}", state=state, error="boom" * (state == "FAILED"), pipeline="p"
    )
    assert closed == parent
    run = client.get_run(parent)
    assert run.info.status == status
    assert run.data.tags[LINEAGE_TAG_KFP_STATE] == state
    assert (LINEAGE_TAG_KFP_ERROR in run.data.tags) == (state == "FAILED")


def test_close_leaves_a_record_when_no_step_started_the_run(client: MlflowClient):
    closed = lineage.close_pipeline_run(
        "exp", "kfp-early", state="FAILED", error="version_data failed", pipeline="p"
    )
    run = client.get_run(closed)
    assert run.info.status == "FAILED"
    assert run.data.tags[LINEAGE_TAG_KFP_ERROR] == "version_data failed"


def test_latest_pipeline_run(client: MlflowClient):
    lineage.pipeline_run("exp", "kfp-a", pipeline="p")
    time.sleep(0.01)  # start times are in milliseconds
    b = lineage.pipeline_run("exp", "kfp-b", pipeline="p")
    lineage.pipeline_run("exp", "kfp-c", pipeline="other")
    assert lineage.latest_pipeline_run("exp", "p") == b
    start_b = client.get_run(b).info.start_time
    assert lineage.latest_pipeline_run("exp", "p", since_ms=start_b + 1) is None
    assert lineage.latest_pipeline_run("nope", "p") is None
