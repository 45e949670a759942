"""Component ``validate_data``: the data expectation suite over the HR dataset; a broken rule stops the run."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate_data(hr: Input[Dataset], min_side: int, parent_run_id: str, reports: Output[Artifact]):
    """Check every frame of ``hr`` (train and test) against the suite; the reports go to ``reports`` and MLflow.

    ``min_side``: the smallest frame side in pixels (the training crop). The step fails when a rule breaks.
    """
    from difiisr.lifecycle.data_steps import validate_data as step

    outcome = step(hr_dir=hr.path, report_dir=reports.path, min_side=min_side, parent_run_id=parent_run_id)
    reports.metadata.update({f"images_{split}": n for split, n in outcome.images.items()})
