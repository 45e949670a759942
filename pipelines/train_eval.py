"""The difiisr lifecycle as a Kubeflow pipeline (the DAG of docs/architecture.md):

    version_data -> validate_data -> synthesize_degradations -> train -> evaluate -> register -> promote
                                                                            (if promoted) -> batch_upscale

Run it:

    python pipelines/train_eval.py                          # the whole DAG here (kfp.local), embedded defaults
    python pipelines/train_eval.py --compile train_eval.yaml   # the package for `kfp run create -f`
    python pipelines/train_eval.py --host URL [--experiment NAME] [--param KEY=VALUE ...]   # submit
    kfp dsl compile --py pipelines/train_eval.py --output train_eval.yaml

The local run needs no setup: under ``--root`` (default ``outputs/demo``) it creates a synthetic HR dataset in a
git + DVC repository (once), a SQLite MLflow store and a local DVC remote, and trains the ``train_tiny`` preset
on CPU. Importing this module runs nothing.

Training has two branches: ``num_nodes`` 1 trains in the step's pod (one process per GPU), ``num_nodes`` > 1
submits a Kubeflow TrainJob from a CPU pod, so no GPU idles while it waits. Both continue with the same
``evaluate_and_release`` stage.
"""

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script or by `kfp dsl compile --py`: make components/ importable
    _ROOT = str(Path(__file__).resolve().parents[1])
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)


from components import GPU_IMAGE  # noqa: E402
from components.synthesize_degradations import synthesize_degradations  # noqa: E402
from components.train import train  # noqa: E402
from components.validate_data import validate_data  # noqa: E402
from components.version_data import version_data  # noqa: E402
from kfp import dsl  # noqa: E402

from difiisr.lifecycle.local import LocalSetup  # noqa: E402
from pipelines import cluster, entry, stages  # noqa: E402

PIPELINE_NAME = stages.TRAIN_EVAL


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="difiisr lifecycle: DVC data version -> validation -> degradation pairs -> training -> "
    "evaluation vs bicubic -> MLflow registration -> champion gate -> batch upscaling with the champion",
)
def train_eval(
    dataset_repo: str = "",
    dataset_path: str = "data/hr",
    dataset_rev: str = "",
    dvc_remote: str = "",
    preset: str = "train_tiny",
    training_steps: int = 0,
    training_overrides: list = [],  # noqa: B006 - a KFP parameter default (KEY=VALUE preset overrides)
    num_gpus: int = 1,
    num_nodes: int = 1,
    seed: int = 0,
    train_protocol: str = "bicubic",
    degradation_variants: int = 2,
    crop: int = 256,
    model_name: str = "difiisr-x4",
    promotion_metric: str = "psnr_y",
    promotion_margin: float = 0.05,
    inference: dict = {},  # noqa: B006 - a KFP parameter default (InferenceSettings params), never mutated
    device: str = "auto",
    batch_input_uri: str = "s3://difiisr-data/batch/incoming/",
    batch_output_uri: str = "s3://difiisr-data/batch/upscaled/",
    batch_glob: str = "*",
    batch_shards: int = 1,
    mlflow_experiment: str = "difiisr",
    work_root: str = cluster.WORK_ROOT,
):
    """Train, evaluate, register and (if it beats the champion by ``promotion_margin``) promote a model.

    Data: ``dataset_path`` (a DVC-tracked folder with ``train/`` and ``test/`` HR frames) at git
    ``dataset_rev`` of ``dataset_repo`` (empty: the working tree), read from ``dvc_remote`` (empty: the
    repository's remote). Training pairs: ``train_protocol`` ``bicubic`` (whole frames, the protocol of the test
    pairs: the tiny default preset's recipe) or ``realesrgan`` (``degradation_variants`` random ``crop`` crops per
    frame: real-world models such as ``train_x4``). Training: ``preset`` (plus ``training_overrides``, ``KEY=VALUE``) for ``training_steps`` (0: the preset's) on ``num_nodes`` x
    ``num_gpus``. Gate: ``promotion_metric`` must beat the champion (or bicubic) by ``promotion_margin``.
    Then ``batch_input_uri`` is upscaled into ``batch_output_uri`` by the champion over ``batch_shards`` pods.
    """
    run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
    with dsl.ExitHandler(stages.lineage_exit_task(mlflow_experiment, PIPELINE_NAME), name="mlflow-lineage"):
        data = cluster.cpu_step(
            version_data(
                dataset_repo=dataset_repo,
                dataset_path=dataset_path,
                dataset_rev=dataset_rev,
                dvc_remote=dvc_remote,
                mlflow_experiment=mlflow_experiment,
                kfp_run_id=run_id,
                pipeline_name=PIPELINE_NAME,
            ),
            cpu="1",
            memory="4Gi",
            retry=cluster.STORAGE_RETRY,
        )
        parent = data.outputs["parent_run_id"]
        checked = cluster.cpu_step(
            validate_data(hr=data.outputs["hr"], min_side=crop, parent_run_id=parent), cpu="2", memory="8Gi"
        )
        pairs = cluster.cpu_step(
            synthesize_degradations(
                hr=data.outputs["hr"],
                variants=degradation_variants,
                crop=crop,
                seed=seed,
                device="cpu",
                parent_run_id=parent,
                train_protocol=train_protocol,
            ).after(checked),
            cpu="4",
            memory="16Gi",
        )
        training = {
            "pairs": pairs.outputs["pairs"],
            "config": preset,
            "steps": training_steps,
            "num_gpus": num_gpus,
            "seed": seed,
            "overrides": training_overrides,
            "mlflow_experiment": mlflow_experiment,
            "parent_run_id": parent,
            "kfp_run_id": run_id,
            "work_root": work_root,
            "image": GPU_IMAGE,
        }
        release = {
            "pairs": pairs.outputs["pairs"],
            "parent_run_id": parent,
            "model_name": model_name,
            "promotion_metric": promotion_metric,
            "promotion_margin": promotion_margin,
            "inference": inference,
            "device": device,
            "batch_input_uri": batch_input_uri,
            "batch_output_uri": batch_output_uri,
            "batch_glob": batch_glob,
            "batch_shards": batch_shards,
            "mlflow_experiment": mlflow_experiment,
        }
        with dsl.If(num_nodes > 1, name="multi-node"):
            launcher = cluster.with_namespace_env(
                cluster.with_work_volume(
                    cluster.cpu_step(
                        train(num_nodes=num_nodes, **training).set_display_name("train (TrainJob)"),
                        cpu="1",
                        memory="4Gi",
                        retry=cluster.TRAIN_RETRY,
                    )
                )
            )
            cluster.stage(
                stages.evaluate_and_release(
                    model=launcher.outputs["model"], model_run_id=launcher.outputs["Output"], **release
                )
            )
        with dsl.Else(name="single-node"):
            trainer = cluster.with_work_volume(
                cluster.gpu_step(
                    train(num_nodes=1, **training),
                    gpus=num_gpus,
                    cpu="8",
                    memory="32Gi",
                    shm="16Gi",
                    retry=cluster.TRAIN_RETRY,
                )
            )
            cluster.stage(
                stages.evaluate_and_release(
                    model=trainer.outputs["model"], model_run_id=trainer.outputs["Output"], **release
                )
            )


def local_arguments(setup: LocalSetup, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The embedded defaults of a local run on ``setup`` (``difiisr.lifecycle.local``), then ``overrides``."""
    return {
        "dataset_repo": str(setup.data_repo),
        "dataset_path": setup.dataset_path,
        "dataset_rev": "HEAD",
        "dvc_remote": str(setup.dvc_remote),
        "num_gpus": 0,
        "num_nodes": 1,
        "batch_input_uri": str(setup.batch_input),
        "batch_output_uri": str(setup.batch_output),
        "mlflow_experiment": setup.experiment,
        "work_root": str(setup.work_root),
        **overrides,
    }


def main(argv=None) -> int:
    """Run locally (default), ``--compile FILE.yaml``, or ``--host URL`` (submit)."""
    return entry.main(
        argv,
        pipeline=train_eval,
        description=__doc__.split("\n\n")[0],
        local_arguments=local_arguments,
    )


if __name__ == "__main__":
    sys.exit(main())
