"""Scheduled batch upscaling as a Kubeflow pipeline: every new frame under an input prefix, x4 into an output
prefix, with the registry's champion (``models:/difiisr-x4@champion``), fanned out over shards (ParallelFor).

    python pipelines/batch_upscale.py                        # once, here (kfp.local), embedded defaults
    python pipelines/batch_upscale.py --compile batch_upscale.yaml
    python pipelines/batch_upscale.py --host URL [--param input_uri=s3://B/in/ --param output_uri=s3://B/out/]
    python pipelines/batch_upscale.py --schedule "0 0 2 * * *" --host URL   # recurring run, 02:00 daily
    kfp dsl compile --py pipelines/batch_upscale.py --output batch_upscale.yaml

A recurring run uses a 6-field cron (seconds first), runs at most one at a time and never catches up on missed
intervals (the job is idempotent: the next run picks up whatever the missed ones would have done). The local
run upscales ``--root``'s ``batch/incoming`` with the champion of the local MLflow store (run
``pipelines/train_eval.py`` first). Importing this module runs nothing.
"""

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script or by `kfp dsl compile --py`: make components/ importable
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)


from kfp import dsl  # noqa: E402

from difiisr.lifecycle.local import LocalSetup  # noqa: E402
from pipelines import cluster, entry, stages  # noqa: E402

PIPELINE_NAME = stages.BATCH_UPSCALE


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="difiisr batch upscaling: every frame under input_uri, x4 into output_uri, with the champion",
)
def batch_upscale(
    model_uri: str = "models:/difiisr-x4@champion",
    input_uri: str = "s3://difiisr-data/batch/incoming/",
    output_uri: str = "s3://difiisr-data/batch/upscaled/",
    glob: str = "*",
    shards: int = 4,
    inference: dict = {},  # noqa: B006 - a KFP parameter default (InferenceSettings params), never mutated
    device: str = "auto",
    mlflow_experiment: str = "difiisr",
):
    """Upscale ``input_uri`` (folder or s3:// prefix) into ``output_uri`` with ``model_uri`` over ``shards`` pods.

    The model URI is pinned to one version before the fan-out, so every shard uses the same model. Outputs
    already made by that version with the same ``inference`` settings are skipped (``difiisr.inference.batch``).
    """
    with dsl.ExitHandler(stages.lineage_exit_task(mlflow_experiment, PIPELINE_NAME), name="mlflow-lineage"):
        cluster.stage(
            stages.upscale_shards(
                model_uri=model_uri,
                input_uri=input_uri,
                output_uri=output_uri,
                glob=glob,
                shards=shards,
                inference=inference,
                device=device,
                mlflow_experiment=mlflow_experiment,
                pipeline_name=PIPELINE_NAME,
                parent_run_id="",
            )
        )


def local_arguments(setup: LocalSetup, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The embedded defaults of a local run on ``setup`` (``difiisr.lifecycle.local``), then ``overrides``."""
    return {
        "input_uri": str(setup.batch_input),
        "output_uri": str(setup.batch_output),
        "shards": 1,
        "mlflow_experiment": setup.experiment,
        **overrides,
    }


def main(argv=None) -> int:
    """Run once locally (default), ``--compile``, ``--host URL`` (one run) or ``--schedule CRON --host URL``."""
    return entry.main(
        argv,
        pipeline=batch_upscale,
        description=__doc__.split("\n\n")[0],
        local_arguments=local_arguments,
        schedulable=True,
    )


if __name__ == "__main__":
    sys.exit(main())
