"""The hyper-parameters of a ResShift diffusion process (the ``diffusion:`` section of a model preset)."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from difiisr.diffusion.schedule import SQRT_ETA_CAP

PredictType = Literal["xstart", "residual", "epsilon", "epsilon_scale"]
PREDICT_TYPES: tuple[str, ...] = get_args(PredictType)


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """ResShift process settings; noise levels are on the sqrt(eta) scale, as in the reference configs.

    Defaults are the released x4 models (DifIISR, SinSR, ResShift realsr s15).
    """

    steps: int = 15
    schedule: Literal["exponential"] = "exponential"
    power: float = 0.3
    min_noise_level: float = 0.04
    etas_end: float = 0.99
    kappa: float = 2.0
    predict_type: PredictType = "xstart"
    normalize_input: bool = True
    latent: bool = True
    cap_sqrt_eta: bool = True
    timestep_respacing: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise ValueError(f"diffusion.steps={self.steps}: the exponential schedule needs at least 2 steps")
        if self.schedule != "exponential":
            raise ValueError(f"diffusion.schedule={self.schedule!r}: only 'exponential' is implemented")
        if not self.power > 0:
            raise ValueError(f"diffusion.power={self.power}: must be > 0 (the released models use 0.3)")
        if not self.min_noise_level > 0:
            raise ValueError(f"diffusion.min_noise_level={self.min_noise_level}: must be > 0 (e.g. 0.04)")
        if not self.kappa > 0:
            raise ValueError(f"diffusion.kappa={self.kappa}: must be > 0 (the released models use 2.0)")
        if not 0 < self.etas_end <= 1:
            raise ValueError(f"diffusion.etas_end={self.etas_end}: must be in (0, 1] (e.g. 0.99)")
        start = min(self.min_noise_level / self.kappa, self.min_noise_level)
        if self.cap_sqrt_eta:
            start = min(start, SQRT_ETA_CAP)
        if not self.etas_end > start:
            raise ValueError(
                f"diffusion.etas_end={self.etas_end}: must be above the first noise level sqrt_eta_1={start:.6g} "
                "(lower min_noise_level or raise etas_end)"
            )
        if self.predict_type not in PREDICT_TYPES:
            raise ValueError(
                f"diffusion.predict_type={self.predict_type!r}: use one of {list(PREDICT_TYPES)}"
            )
        if self.predict_type in ("epsilon", "epsilon_scale") and self.etas_end >= 1:
            raise ValueError(
                f"diffusion.etas_end={self.etas_end}: predict_type {self.predict_type!r} divides by 1 - eta_T, "
                "so etas_end must be < 1 (e.g. 0.99)"
            )
        if self.timestep_respacing is not None and not 1 <= self.timestep_respacing <= self.steps:
            raise ValueError(
                f"diffusion.timestep_respacing={self.timestep_respacing}: must be between 1 and "
                f"steps={self.steps}, or null for no respacing"
            )
