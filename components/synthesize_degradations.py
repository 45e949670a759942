"""Component ``synthesize_degradations``: LR/HR pairs from the HR dataset (Real-ESRGAN train, bicubic test)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def synthesize_degradations(
    hr: Input[Dataset],
    variants: int,
    crop: int,
    seed: int,
    device: str,
    parent_run_id: str,
    train_protocol: str,
    pairs: Output[Dataset],
):
    """Write ``pairs/train`` (``train_protocol``: ``variants`` seeded Real-ESRGAN crops per frame, or bicubic
    whole frames) and ``pairs/test`` (bicubic)."""
    from difiisr.lifecycle.data_steps import synthesize_degradations as step

    outcome = step(
        hr_dir=hr.path,
        pairs_dir=pairs.path,
        variants=variants,
        crop=crop,
        seed=seed,
        device=device,
        parent_run_id=parent_run_id,
        train_protocol=train_protocol,
    )
    pairs.metadata.update(outcome.metadata())
