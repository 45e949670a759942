"""Components of the batch-upscaling step: ``plan_batch`` (pin the model, one work order per shard) and
``batch_upscale`` (one shard; fanned out over the work orders with ``dsl.ParallelFor``)."""

from kfp import dsl
from kfp.dsl import Metrics, Output

from components import CPU_IMAGE, GPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def plan_batch(
    model_uri: str,
    shards: int,
    mlflow_experiment: str,
    kfp_run_id: str,
    pipeline_name: str,
    parent_run_id: str,
) -> list:
    """One work order per shard ``0..shards-1``: ``{"shard", "model_uri", "parent_run_id"}`` (ParallelFor items).

    ``model_uri`` (e.g. ``models:/difiisr-x4@champion``) is pinned to one version for every shard;
    ``parent_run_id`` empty: find or start the MLflow parent run of this pipeline run.
    """
    from difiisr.lifecycle.release_steps import plan_batch as step

    plan = step(
        model_uri=model_uri,
        shards=shards,
        experiment=mlflow_experiment,
        kfp_run_id=kfp_run_id,
        pipeline=pipeline_name,
        parent_run_id=parent_run_id,
    )
    return plan.work_orders()


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def batch_upscale(
    model_uri: str,
    input_uri: str,
    output_uri: str,
    glob: str,
    shard: int,
    shards: int,
    inference: dict,
    device: str,
    parent_run_id: str,
    summary: Output[Metrics],
):
    """Upscale shard ``shard`` of ``shards`` of ``input_uri`` (folder or s3:// prefix) into ``output_uri``.

    Idempotent and resumable (``difiisr.inference.batch``): outputs already made by this model version and
    settings are skipped. Failed inputs are counted in ``summary`` and the run report; the step fails only when
    the job itself fails.
    """
    from difiisr.lifecycle.release_steps import batch_upscale as step

    result = step(
        model_uri=model_uri,
        input_uri=input_uri,
        output_uri=output_uri,
        glob=glob,
        shard=shard,
        shards=shards,
        inference=inference,
        device=device,
        parent_run_id=parent_run_id,
    )
    for key in ("done", "skipped", "failed"):
        summary.log_metric(key, float(getattr(result, key)))
    summary.metadata.update(
        {"report_uri": str(result.report_uri or ""), "model_version": str(result.model_version)}
    )
