"""Noise schedules of the ResShift family and the reference timestep respacing.

All values are on the sqrt(eta) scale: eta_t is the share of the residual z_y - z_0 in z_t, and the noise
standard deviation at step t is kappa * sqrt(eta_t).
"""

from __future__ import annotations

import math

import numpy as np

#: SinSR and DifIISR additionally cap the first noise level at sqrt(0.001) (= 0.0316).
SQRT_ETA_CAP = math.sqrt(0.001)


def exponential_sqrt_etas(
    steps: int,
    min_noise_level: float,
    etas_end: float,
    kappa: float,
    power: float,
    cap_sqrt_eta: bool,
) -> np.ndarray:
    """ResShift exponential schedule: ``(steps,)`` float64 sqrt(eta_t), increasing from sqrt_eta_1 to ``etas_end``.

    sqrt_eta_1 = min(min_noise_level / kappa, min_noise_level), and with ``cap_sqrt_eta`` (SinSR/DifIISR) also at
    most sqrt(0.001); then sqrt_eta_i = sqrt_eta_1 * b**((i/(T-1))**power * (T-1)), b = (etas_end/sqrt_eta_1)**(1/(T-1)).
    """
    if steps < 2:
        raise ValueError(f"steps={steps}: the exponential schedule needs at least 2 steps")
    if min_noise_level <= 0 or kappa <= 0 or power <= 0:
        raise ValueError(
            f"min_noise_level={min_noise_level}, kappa={kappa}, power={power}: all must be > 0 "
            "(released models: 0.04, 2.0, 0.3)"
        )
    start = min(min_noise_level / kappa, min_noise_level)
    if cap_sqrt_eta:
        start = min(start, SQRT_ETA_CAP)
    if not start < etas_end <= 1:
        raise ValueError(
            f"etas_end={etas_end}: must be in ({start:.6g}, 1], above the first noise level sqrt_eta_1={start:.6g}"
        )
    log_growth = math.log(etas_end / start) / (steps - 1)
    exponents = np.linspace(0.0, 1.0, steps, dtype=np.float64) ** power * (steps - 1)
    return start * np.exp(log_growth * exponents)


def space_timesteps(num_timesteps: int, sample_timesteps: int) -> list[int]:
    """Indices (sorted, 0-based) kept when respacing ``num_timesteps`` steps to ``sample_timesteps``.

    Same choice as the ResShift reference: ``int(num_timesteps / sample_timesteps * x)`` for x = 0..n-1, so the
    first step is always kept and the last (noisiest) one only when n == num_timesteps (15 -> 4 keeps 0, 3, 7, 11).
    """
    if not 1 <= sample_timesteps <= num_timesteps:
        raise ValueError(
            f"timestep_respacing={sample_timesteps}: must be between 1 and the number of steps ({num_timesteps})"
        )
    return sorted({int((num_timesteps / sample_timesteps) * x) for x in range(sample_timesteps)})
