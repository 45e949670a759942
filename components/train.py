"""Component ``train``: train the diffusion model (one process, ``accelerate launch`` on N GPUs, or a TrainJob)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(
    pairs: Input[Dataset],
    config: str,
    steps: int,
    num_gpus: int,
    num_nodes: int,
    seed: int,
    overrides: list,
    mlflow_experiment: str,
    parent_run_id: str,
    kfp_run_id: str,
    work_root: str,
    image: str,
    model: Output[Model],
) -> str:
    """Train preset ``config`` on ``pairs``; the model folder goes to ``model``; returns the training run id.

    ``num_nodes`` > 1 runs a Kubeflow TrainJob of ``num_nodes`` x ``num_gpus`` ranks in ``image``; otherwise
    this pod trains with one process per GPU (one process on CPU). Checkpoints stay in
    ``work_root/KFP_RUN_ID/train``, so a retry after a preemption resumes. ``steps`` 0: the preset's.
    ``overrides``: more ``KEY=VALUE`` settings of the preset (``difiisr train --set``), e.g. ``optim.lr=1e-4``.
    """
    from difiisr.lifecycle.model_steps import train as step

    trained = step(
        pairs_dir=pairs.path,
        model_dir=model.path,
        work_root=work_root,
        config=config,
        steps=steps,
        num_gpus=num_gpus,
        num_nodes=num_nodes,
        seed=seed,
        overrides=overrides,
        experiment=mlflow_experiment,
        parent_run_id=parent_run_id,
        kfp_run_id=kfp_run_id,
        image=image,
    )
    model.metadata.update(trained.metadata())
    return trained.run_id
