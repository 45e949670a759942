"""The pipeline's release steps: register the evaluated run, pass it through the promotion gate, and batch
upscale with the champion (fanned out over shards).

Each function is what one Kubeflow component (``components/``) calls, inside the step's MLflow child run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from difiisr.errors import DifiisrError, ExitCode, JobError, UsageError
from difiisr.lifecycle.lineage import pipeline_run, step_run
from difiisr.registry.names import (
    ALIAS_CHAMPION,
    LINEAGE_DATA_TAG_PREFIX,
    LINEAGE_METRIC_BATCH,
    LINEAGE_TAG_BATCH_EXIT,
    LINEAGE_TAG_BATCH_MODEL,
    LINEAGE_TAG_BATCH_REPORT,
    LINEAGE_TAG_KFP_RUN_ID,
    LINEAGE_TAG_MODEL_NAME,
    LINEAGE_TAG_MODEL_RUN,
    LINEAGE_TAG_MODEL_VERSION,
    LINEAGE_TAG_PIPELINE_RUN,
    LINEAGE_TAG_PROMOTION_CHAMPION,
    TAG_DECISION,
    TAG_REASON,
)

log = logging.getLogger(__name__)

STEP_REGISTER = "register"
STEP_PROMOTE = "promote"
STEP_BATCH = "batch_upscale"


@dataclasses.dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version (alias ``challenger``) and the run it came from."""

    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        """``models:/NAME/VERSION``."""
        return f"models:/{self.name}/{self.version}"

    @property
    def champion_uri(self) -> str:
        """``models:/NAME@champion``: the alias the promotion gate moves and production (batch upscaling) reads."""
        return f"models:/{self.name}@{ALIAS_CHAMPION}"


def register(*, model_run_id: str, name: str, parent_run_id: str) -> RegisteredVersion:
    """Register the evaluated training run as a new version of ``name`` (alias ``challenger``).

    Besides ``register_run``'s tags, the version records the pipeline run and the DVC identity of the data
    (``data.repo``, ``data.path``, ``data.rev``, ``data.md5``), so the exact data can be fetched back from it.
    """
    from difiisr.registry.register import register_run

    with step_run(parent_run_id, STEP_REGISTER) as run:
        mv = register_run(model_run_id, name, client=run.client)
        parent = run.client.get_run(parent_run_id)
        lineage = {k: v for k, v in parent.data.tags.items() if k.startswith(LINEAGE_DATA_TAG_PREFIX)}
        lineage[LINEAGE_TAG_PIPELINE_RUN] = parent_run_id
        lineage[LINEAGE_TAG_KFP_RUN_ID] = parent.data.tags.get(LINEAGE_TAG_KFP_RUN_ID, "")
        for key, value in lineage.items():
            run.client.set_model_version_tag(name, str(mv.version), key, value)
        run.set_tags(
            {
                LINEAGE_TAG_MODEL_NAME: name,
                LINEAGE_TAG_MODEL_VERSION: str(mv.version),
                LINEAGE_TAG_MODEL_RUN: model_run_id,
            }
        )
    log.info("registered %s v%s from run %s", name, mv.version, model_run_id)
    return RegisteredVersion(name, str(mv.version), model_run_id)


@dataclasses.dataclass(frozen=True)
class GateResult:
    """The promotion gate's outcome: ``promoted`` decides the pipeline's promotion branch."""

    promoted: bool
    outcome: str
    reason: str
    champion: str  # the version behind the champion alias after the gate ("" when there is none)


def promote(*, name: str, version: str, metric: str, min_delta: float, parent_run_id: str) -> GateResult:
    """The promotion gate: make ``version`` the champion if it beats the champion (or bicubic) by ``min_delta``.

    The decision and the alias move are one library call (``difiisr.registry.promotion.promote``, safe against
    concurrent promoters); the decision is written to the version's tags and to this step's run either way.
    """
    from difiisr.registry.promotion import promote as promote_version

    with step_run(parent_run_id, STEP_PROMOTE) as run:
        run.log_params(
            {"metric": metric, "min_delta": min_delta, "model.name": name, "model.version": version}
        )
        decision = promote_version(
            name, metric=metric, min_delta=min_delta, version=version, client=run.client
        )
        run.set_tags(
            {
                TAG_DECISION: decision.outcome,
                TAG_REASON: decision.reason,
                LINEAGE_TAG_PROMOTION_CHAMPION: decision.champion or "",
            }
        )
        if decision.challenger_value is not None:
            run.log_metrics({f"challenger.{metric}": decision.challenger_value}, step=0)
        if decision.reference_value is not None:
            run.log_metrics({f"reference.{metric}": decision.reference_value}, step=0)
    log.info(decision.summary())
    return GateResult(decision.promoted, decision.outcome, decision.reason, decision.champion or "")


def pin_model_uri(uri: str, *, client: Any | None = None) -> str:
    """``models:/NAME@ALIAS`` -> ``models:/NAME/VERSION`` (the version the alias names now); others unchanged.

    Every shard of one batch run then uses the same model even if the alias moves while they run.
    """
    prefix = "models:/"
    if not uri.startswith(prefix) or "@" not in uri:
        return uri
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias = uri[len(prefix) :].split("@", 1)
    c = client or MlflowClient()
    try:
        mv = c.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise UsageError(
            f"{uri}: model {name!r} has no alias {alias!r} ({exc.message}); promote a version first "
            f"(the train_eval pipeline, or 'difiisr promote --name {name}')"
        ) from None
    return f"{prefix}{name}/{mv.version}"


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """One batch run: its MLflow parent run, the pinned model and the shard indices to fan out over."""

    parent_run_id: str
    model_uri: str
    shards: list[int]

    def work_orders(self) -> list[dict[str, Any]]:
        """One ``{"shard", "model_uri", "parent_run_id"}`` per shard: the items of the pipeline's ParallelFor."""
        return [
            {"shard": i, "model_uri": self.model_uri, "parent_run_id": self.parent_run_id}
            for i in self.shards
        ]


def plan_batch(
    *,
    model_uri: str,
    shards: int,
    experiment: str,
    kfp_run_id: str,
    pipeline: str,
    parent_run_id: str = "",
) -> BatchPlan:
    """Pin ``model_uri`` to a version and list the shards ``0..shards-1``; find or start the pipeline's parent run.

    ``parent_run_id`` empty (the scheduled batch pipeline): the parent run of KFP run ``kfp_run_id``.
    """
    if shards < 1:
        raise UsageError(f"shards={shards}: must be >= 1 (the number of pods to fan out over)")
    pinned = pin_model_uri(model_uri)
    parent = parent_run_id or pipeline_run(
        experiment, kfp_run_id, pipeline=pipeline, tags={LINEAGE_TAG_BATCH_MODEL: pinned}
    )
    log.info("batch plan: %s (%s), %d shard(s)", pinned, model_uri, shards)
    return BatchPlan(parent, pinned, list(range(shards)))


def batch_upscale(
    *,
    model_uri: str,
    input_uri: str,
    output_uri: str,
    glob: str,
    shard: int,
    shards: int,
    inference: Mapping[str, Any],
    device: str,
    parent_run_id: str,
) -> Any:
    """Upscale shard ``shard`` of ``shards`` of ``input_uri`` into ``output_uri`` (``difiisr.inference.batch``).

    Returns the ``BatchSummary``. Inputs that fail are counted (the summary, the run report and this step's MLflow
    run) without failing the step; a job failure (model, storage) raises, so the pipeline's retry policy applies.
    """
    from difiisr.inference.batch import BatchJob, run_batch
    from difiisr.inference.settings import InferenceSettings

    step = f"{STEP_BATCH}.shard-{shard}" if shards > 1 else STEP_BATCH
    with step_run(parent_run_id, step) as run:
        settings = InferenceSettings.from_params(dict(inference))
        run.log_params(
            {
                "model_uri": model_uri,
                "input_uri": input_uri,
                "output_uri": output_uri,
                "glob": glob,
                "shard": f"{shard}/{shards}",
                "device": device,
                **settings.to_record(),
            }
        )
        job = BatchJob(
            model=model_uri,
            input_uri=input_uri,
            output_uri=output_uri,
            glob=glob,
            shard=(shard, shards) if shards > 1 else None,
            settings=settings,
            device=device,
            progress=False,
        )
        summary = run_batch(job)
        counts = {"done": summary.done, "skipped": summary.skipped, "failed": summary.failed}
        run.log_metrics({LINEAGE_METRIC_BATCH.format(status=k): v for k, v in counts.items()}, step=0)
        run.set_tags(
            {
                LINEAGE_TAG_BATCH_MODEL: model_uri,
                LINEAGE_TAG_BATCH_REPORT: str(summary.report_uri or ""),
                LINEAGE_TAG_BATCH_EXIT: int(summary.exit_code),
            }
        )
        if summary.exit_code == ExitCode.JOB_FAILED:
            raise JobError(f"batch upscaling of {input_uri} failed; report: {summary.report_uri}")
        if summary.exit_code not in (ExitCode.OK, ExitCode.FAILURES):
            raise DifiisrError(
                f"batch upscaling of {input_uri} ended with exit code {int(summary.exit_code)}"
            )
    if summary.failed:
        log.warning("%d input(s) failed; see %s", summary.failed, summary.report_uri)
    return summary
