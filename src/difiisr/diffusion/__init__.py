"""ResShift diffusion: schedule, process math and samplers. No network code and no I/O.

A "model" is any callable ``model(x_scaled: (B,C,H,W), t: (B,) int64, lq) -> (B,C,H,W)``.
"""

from difiisr.diffusion.config import PREDICT_TYPES, DiffusionConfig, PredictType
from difiisr.diffusion.resshift import Model, ResShiftDiffusion, draw_noise
from difiisr.diffusion.samplers import (
    SAMPLERS,
    Guidance,
    Sampler,
    sample_ancestral,
    sample_ddim,
    sample_onestep,
)
from difiisr.diffusion.schedule import SQRT_ETA_CAP, exponential_sqrt_etas, space_timesteps

__all__ = [
    "PREDICT_TYPES",
    "SAMPLERS",
    "SQRT_ETA_CAP",
    "DiffusionConfig",
    "Guidance",
    "Model",
    "PredictType",
    "ResShiftDiffusion",
    "Sampler",
    "draw_noise",
    "exponential_sqrt_etas",
    "sample_ancestral",
    "sample_ddim",
    "sample_onestep",
    "space_timesteps",
]
