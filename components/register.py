"""Component ``register``: the evaluated training run becomes a model version with the alias ``challenger``."""

from typing import NamedTuple

from kfp import dsl

from components import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(model_run_id: str, model_name: str, parent_run_id: str) -> NamedTuple(
    "RegisterOutputs", [("version", str), ("model_uri", str), ("champion_uri", str)]
):
    """Register run ``model_run_id`` (model folder + evaluation) as a new version of ``model_name``.

    Outputs the version, its URI ``models:/NAME/VERSION`` and the URI of the model's champion alias
    ``models:/NAME@champion`` (what the promotion gate moves, and what batch upscaling reads).
    """
    from difiisr.lifecycle.release_steps import register as step

    registered = step(model_run_id=model_run_id, name=model_name, parent_run_id=parent_run_id)
    return (registered.version, registered.uri, registered.champion_uri)
