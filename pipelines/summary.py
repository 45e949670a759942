"""A local pipeline run end to end: lay out the embedded defaults, run the DAG with ``kfp.local``, then print
where everything went (read back from the run's MLflow lineage).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from difiisr.errors import ExitCode
from difiisr.evaluation.evaluate import HTML_NAME
from difiisr.registry.names import (
    ARTIFACT_EVALUATION,
    LINEAGE_METRIC_BATCH,
    LINEAGE_TAG_BATCH_MODEL,
    LINEAGE_TAG_BATCH_REPORT,
    LINEAGE_TAG_DATA_FILES,
    LINEAGE_TAG_DATA_MD5,
    LINEAGE_TAG_DATA_PATH,
    LINEAGE_TAG_DATA_REPO,
    LINEAGE_TAG_DATA_REV,
    LINEAGE_TAG_MODEL_NAME,
    LINEAGE_TAG_MODEL_RUN,
    LINEAGE_TAG_MODEL_VERSION,
    TAG_DECISION,
    TAG_REASON,
    eval_metric_key,
)
from pipelines import entry

KEY_METRIC = "psnr_y"


def _local_path(uri: str) -> str:
    """A ``file:`` URI as a path; other URIs unchanged."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def _ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000  # then http://127.0.0.1:5000"
    return f"open {tracking_uri} in a browser"


def describe(parent_run_id: str, tracking_uri: str, output_uri: str | None) -> list[str]:
    """Lines saying what the pipeline run made and where: data, model version, report, gate, upscaled images."""
    from difiisr.lifecycle.lineage import step_runs

    steps = step_runs(parent_run_id)
    by_step = {s.step: s for s in steps}
    lines = [
        f"  MLflow pipeline run {parent_run_id}; steps: " + ", ".join(f"{s.step} {s.status}" for s in steps)
    ]
    data = by_step.get("version_data")
    if data is not None:
        t = data.tags
        lines.append(
            f"  data:       {t.get(LINEAGE_TAG_DATA_PATH)} at rev {t.get(LINEAGE_TAG_DATA_REV, '')[:12]} of "
            f"{t.get(LINEAGE_TAG_DATA_REPO)}: DVC md5 {t.get(LINEAGE_TAG_DATA_MD5)} ({t.get(LINEAGE_TAG_DATA_FILES)} files)"
        )
    evaluated = by_step.get("evaluate")
    if evaluated is not None:
        m = evaluated.metrics
        model = m.get(eval_metric_key(KEY_METRIC))
        base = m.get(eval_metric_key(KEY_METRIC, method="bicubic"))
        if model is not None and base is not None:
            lines.append(
                f"  evaluation: {KEY_METRIC} {model:.3f} dB vs bicubic {base:.3f} dB ({model - base:+.3f} dB) "
                f"on {int(m.get(eval_metric_key('n_images'), 0))} held-out pairs"
            )
        report = f"{evaluated.artifact_uri}/{ARTIFACT_EVALUATION}/{HTML_NAME}"
        lines.append(f"  report:     {_local_path(report)}")
    registered = by_step.get("register")
    if registered is not None:
        t = registered.tags
        name, version = t.get(LINEAGE_TAG_MODEL_NAME), t.get(LINEAGE_TAG_MODEL_VERSION)
        lines.append(
            f"  model:      {name} version {version} (models:/{name}/{version}), from training run "
            f"{t.get(LINEAGE_TAG_MODEL_RUN)}"
        )
    gate = by_step.get("promote")
    if gate is not None:
        outcome = gate.tags.get(TAG_DECISION, "?")
        lines.append(f"  promotion:  {outcome.upper()}: {gate.tags.get(TAG_REASON, '')}")
    shards = [s for s in steps if s.step.startswith("batch_upscale")]
    if shards:
        counts = {
            k: int(sum(s.metrics.get(LINEAGE_METRIC_BATCH.format(status=k), 0) for s in shards))
            for k in ("done", "skipped", "failed")
        }
        model_uri = shards[0].tags.get(LINEAGE_TAG_BATCH_MODEL, "")
        lines.append(
            f"  upscaled:   {counts['done']} written, {counts['skipped']} already there, {counts['failed']} failed "
            f"-> {output_uri} (model {model_uri}; report {shards[0].tags.get(LINEAGE_TAG_BATCH_REPORT, '')})"
        )
    elif gate is not None:
        lines.append(
            "  upscaled:   nothing: the gate did not promote this model, so the promotion branch was skipped"
        )
    lines.append(f"  MLflow UI:  {_ui_command(tracking_uri)}")
    return lines


def run_and_report(
    pipeline: Any,
    pipeline_name: str,
    root: Path,
    params: Mapping[str, Any],
    make_arguments: Callable[[Any, Mapping[str, Any]], dict[str, Any]],
) -> int:
    """Prepare ``root``, run ``pipeline`` locally with ``make_arguments(setup, params)``, print the summary."""
    from difiisr.lifecycle.lineage import latest_pipeline_run
    from difiisr.lifecycle.local import prepare_local

    experiment = str(params.get("mlflow_experiment", "difiisr"))
    setup = prepare_local(root, experiment=experiment)
    os.environ["MLFLOW_TRACKING_URI"] = setup.tracking_uri  # every step (a subprocess) uses the same store
    arguments = make_arguments(setup, params)
    started = time.time()
    error = None
    try:
        entry.run_local(pipeline, arguments, setup.pipeline_root)
    except RuntimeError as exc:  # kfp.local: a task failed; its log is above
        error = str(exc)
    took = time.time() - started
    state = "FAILED" if error else "finished"
    print(f"\n{pipeline_name} {state} in {took / 60:.1f} min (local run under {setup.root})")
    parent = latest_pipeline_run(experiment, pipeline_name, since_ms=int(started * 1000) - 1000)
    if parent is not None:
        output = arguments.get("batch_output_uri") or arguments.get("output_uri")
        print("\n".join(describe(parent, setup.tracking_uri, output)))
    if error:
        print(f"  error: {error}")
        return int(ExitCode.JOB_FAILED)
    return int(ExitCode.OK)
