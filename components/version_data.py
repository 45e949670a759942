"""Component ``version_data``: materialise a DVC version of the HR dataset and start the run's MLflow lineage."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def version_data(
    dataset_repo: str,
    dataset_path: str,
    dataset_rev: str,
    dvc_remote: str,
    mlflow_experiment: str,
    kfp_run_id: str,
    pipeline_name: str,
    hr: Output[Dataset],
) -> NamedTuple("VersionDataOutputs", [("parent_run_id", str), ("dataset_md5", str)]):
    """Fetch ``dataset_path`` at git ``dataset_rev`` of ``dataset_repo`` (DVC) into ``hr``; open the parent run.

    Empty ``dataset_repo``/``dataset_rev``: the working tree of the step's directory; empty ``dvc_remote``: the
    repository's default remote. Outputs the MLflow parent run of this pipeline run and the data's DVC md5.
    """
    from difiisr.lifecycle.data_steps import version_data as step

    data = step(
        repo=dataset_repo,
        path=dataset_path,
        rev=dataset_rev,
        dest=hr.path,
        remote=dvc_remote,
        experiment=mlflow_experiment,
        kfp_run_id=kfp_run_id,
        pipeline=pipeline_name,
    )
    hr.metadata.update(data.metadata())
    return (data.parent_run_id, data.md5)
