"""Parts shared by the two pipelines (not pipelines to run on their own): the lineage exit task, and two
sub-pipelines:

- ``upscale_shards``: pin the model, then upscale ``shards`` shards of the input prefix in parallel
  (``dsl.ParallelFor``); the body of ``batch_upscale.py`` and the last stage of ``train_eval.py``;
- ``evaluate_and_release``: evaluate -> register -> promotion gate -> (if promoted) ``upscale_shards`` with the
  champion. ``train_eval.py`` runs it after either of its two training branches (one pod, or a multi-node
  TrainJob), which is how both branches share one tail without ``dsl.OneOf``.
"""

from components.batch_upscale import batch_upscale, plan_batch
from components.evaluate import evaluate
from components.lineage import close_lineage
from components.promote import promote
from components.register import register
from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from pipelines import cluster

TRAIN_EVAL = "difiisr-train-eval"
BATCH_UPSCALE = "difiisr-batch-upscale"


def lineage_exit_task(mlflow_experiment, pipeline_name: str):
    """The exit task of a pipeline (``dsl.ExitHandler``): ends the run's MLflow parent run with its final state."""
    return cluster.cpu_step(
        close_lineage(
            mlflow_experiment=mlflow_experiment,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            pipeline_name=pipeline_name,
        ),
        cpu="250m",
        memory="512Mi",
        retry=cluster.STORAGE_RETRY,
    )


@dsl.pipeline(name="difiisr-upscale-shards")
def upscale_shards(
    model_uri: str,
    input_uri: str,
    output_uri: str,
    glob: str,
    shards: int,
    inference: dict,
    device: str,
    mlflow_experiment: str,
    pipeline_name: str,
    parent_run_id: str,
):
    """Pin ``model_uri`` to one version, then upscale each of ``shards`` shards of ``input_uri`` in its own pod."""
    plan = cluster.cpu_step(
        plan_batch(
            model_uri=model_uri,
            shards=shards,
            mlflow_experiment=mlflow_experiment,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            pipeline_name=pipeline_name,
            parent_run_id=parent_run_id,
        ),
        cpu="500m",
        memory="1Gi",
        retry=cluster.STORAGE_RETRY,
    )
    with dsl.ParallelFor(plan.output, name="shard") as order:
        cluster.gpu_step(
            batch_upscale(
                model_uri=order.model_uri,
                input_uri=input_uri,
                output_uri=output_uri,
                glob=glob,
                shard=order.shard,
                shards=shards,
                inference=inference,
                device=device,
                parent_run_id=order.parent_run_id,
            ),
            gpus=1,
            cpu="4",
            memory="16Gi",
            retry=cluster.STORAGE_RETRY,
        )


@dsl.pipeline(name="difiisr-evaluate-release")
def evaluate_and_release(
    model: Input[Model],
    pairs: Input[Dataset],
    model_run_id: str,
    parent_run_id: str,
    model_name: str,
    promotion_metric: str,
    promotion_margin: float,
    inference: dict,
    device: str,
    batch_input_uri: str,
    batch_output_uri: str,
    batch_glob: str,
    batch_shards: int,
    mlflow_experiment: str,
):
    """Evaluate the trained model, register it, pass it through the gate; when promoted, batch upscale with it."""
    evaluated = cluster.gpu_step(
        evaluate(
            model=model,
            pairs=pairs,
            model_run_id=model_run_id,
            parent_run_id=parent_run_id,
            inference=inference,
            device=device,
        ),
        gpus=1,
        cpu="4",
        memory="16Gi",
        retry=cluster.STORAGE_RETRY,
    )
    registered = cluster.cpu_step(
        register(model_run_id=model_run_id, model_name=model_name, parent_run_id=parent_run_id).after(
            evaluated
        ),
        cpu="1",
        memory="4Gi",
        retry=cluster.STORAGE_RETRY,
    )
    gate = cluster.cpu_step(
        promote(
            model_name=model_name,
            version=registered.outputs["version"],
            metric=promotion_metric,
            min_delta=promotion_margin,
            parent_run_id=parent_run_id,
        ),
        cpu="500m",
        memory="1Gi",
        retry=cluster.STORAGE_RETRY,
    )
    with dsl.If(gate.output == True, name="promoted"):  # noqa: E712 - a KFP condition, not a bool
        cluster.stage(
            upscale_shards(
                model_uri=registered.outputs["champion_uri"],
                input_uri=batch_input_uri,
                output_uri=batch_output_uri,
                glob=batch_glob,
                shards=batch_shards,
                inference=inference,
                device=device,
                mlflow_experiment=mlflow_experiment,
                pipeline_name=TRAIN_EVAL,
                parent_run_id=parent_run_id,
            )
        )
