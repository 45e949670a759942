"""Component ``evaluate``: the model against bicubic on the held-out pairs; figures, HTML report with crops."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    pairs: Input[Dataset],
    model_run_id: str,
    parent_run_id: str,
    inference: dict,
    device: str,
    metrics: Output[Metrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
) -> str:
    """Evaluate ``model`` on ``pairs/test``; log to the training run and this step's run; returns the eval md5.

    ``metrics``: model and bicubic means per metric; ``report``: the HTML report (crops bicubic | SR | HR);
    ``evaluation``: the whole report folder (CSV, JSON, SR images). ``inference``: sampler, steps, seed, tile.
    """
    import shutil

    from difiisr.lifecycle.model_steps import evaluate as step

    outcome = step(
        model_dir=model.path,
        pairs_dir=pairs.path,
        out_dir=evaluation.path,
        model_run_id=model_run_id,
        parent_run_id=parent_run_id,
        inference=inference,
        device=device,
    )
    for name, value in outcome.model.items():
        metrics.log_metric(name, value)
    for name, value in outcome.bicubic.items():
        metrics.log_metric(f"bicubic_{name}", value)
    shutil.copyfile(outcome.report_html, report.path)
    evaluation.metadata.update({"eval_md5": outcome.eval_md5, "n_images": outcome.n_images})
    return outcome.eval_md5
