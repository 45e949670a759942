"""Component ``promote``: the promotion gate; its output decides the pipeline's promotion branch."""

from kfp import dsl

from components import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def promote(model_name: str, version: str, metric: str, min_delta: float, parent_run_id: str) -> bool:
    """Make ``version`` the champion if it beats the champion (or bicubic, for the first) by ``min_delta``.

    Returns whether it was promoted (one boolean output: the pipeline's ``dsl.If`` reads it). The outcome
    (promoted, rejected, refused, unchanged) and its reason are written to the version's tags and to the step's
    MLflow run either way.
    """
    from difiisr.lifecycle.release_steps import promote as step

    gate = step(
        name=model_name, version=version, metric=metric, min_delta=min_delta, parent_run_id=parent_run_id
    )
    return gate.promoted
