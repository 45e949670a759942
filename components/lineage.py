"""Component ``close_lineage``: the pipeline's exit task; ends the MLflow parent run with the run's final state."""

from kfp import dsl

from components import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def close_lineage(
    mlflow_experiment: str, kfp_run_id: str, pipeline_name: str, status: dsl.PipelineTaskFinalStatus
):
    """Mark the parent run of KFP run ``kfp_run_id`` FINISHED, FAILED or KILLED, with the state and error."""
    from difiisr.lifecycle.lineage import close_pipeline_run

    close_pipeline_run(
        mlflow_experiment,
        kfp_run_id,
        state=status.state,
        error=status.error_message or "",
        pipeline=pipeline_name,
    )
