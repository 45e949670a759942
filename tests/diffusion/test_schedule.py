"""The exponential schedule (method.md section 2 table), the SinSR/DifIISR cap, respacing and the config."""

from __future__ import annotations

import math

import numpy as np
import pytest

from difiisr.config import ConfigError, from_mapping, to_mapping
from difiisr.diffusion import SQRT_ETA_CAP, DiffusionConfig, exponential_sqrt_etas, space_timesteps

# method.md section 2, T=15, power 0.3, min_noise_level 0.04, etas_end 0.99, kappa 2.
TABLE_T15 = [
    0.02000, 0.11717, 0.17631, 0.23363, 0.29157, 0.35101, 0.41236, 0.47586,
    0.54167, 0.60991, 0.68066, 0.75399, 0.82995, 0.90861, 0.99000,
]  # fmt: skip
JOURNAL_T4 = [0.1, 0.5201, 0.7614, 0.99]


@pytest.mark.parametrize("cap", [True, False])
def test_released_schedule_matches_method_table(cap: bool) -> None:
    sqrt_etas = exponential_sqrt_etas(15, 0.04, 0.99, 2.0, 0.3, cap)
    assert sqrt_etas.dtype == np.float64 and sqrt_etas.shape == (15,)
    np.testing.assert_allclose(sqrt_etas, TABLE_T15, atol=1e-4, rtol=0)
    # The cap (0.0316) is above min(0.04/2, 0.04) = 0.02, so it does not change the released schedule.
    assert sqrt_etas[0] == pytest.approx(0.02, abs=1e-15)


def test_journal_four_step_schedule_without_cap() -> None:
    sqrt_etas = exponential_sqrt_etas(4, 0.2, 0.99, 2.0, 0.3, False)
    np.testing.assert_allclose(sqrt_etas, JOURNAL_T4, atol=1e-4, rtol=0)


def test_cap_replaces_first_level_and_regrows_to_etas_end() -> None:
    capped = exponential_sqrt_etas(4, 0.2, 0.99, 2.0, 0.3, True)
    assert abs(SQRT_ETA_CAP - 0.0316227766) < 1e-10
    assert capped[0] == pytest.approx(math.sqrt(0.001), abs=1e-15)
    assert capped[-1] == pytest.approx(0.99, abs=1e-12)
    # Closed form with start = sqrt(0.001): start * (0.99/start)**((i/3)**0.3).
    expected = [math.sqrt(0.001) * (0.99 / math.sqrt(0.001)) ** ((i / 3) ** 0.3) for i in range(4)]
    np.testing.assert_allclose(capped, expected, rtol=1e-12)
    assert np.all(np.abs(capped[:-1] - np.array(JOURNAL_T4[:-1])) > 0.05)


def test_cap_applies_with_kappa_one() -> None:
    # kappa 1: min(0.04/1, 0.04) = 0.04 > sqrt(0.001), so only the capped schedule starts at 0.0316.
    plain = exponential_sqrt_etas(15, 0.04, 0.99, 1.0, 0.3, False)
    capped = exponential_sqrt_etas(15, 0.04, 0.99, 1.0, 0.3, True)
    assert plain[0] == pytest.approx(0.04, abs=1e-15)
    assert capped[0] == pytest.approx(SQRT_ETA_CAP, abs=1e-15)
    assert plain[-1] == pytest.approx(0.99) and capped[-1] == pytest.approx(0.99)


def test_schedule_closed_form_for_generic_parameters() -> None:
    steps, start, end, power = 7, 0.05, 0.9, 0.5
    sqrt_etas = exponential_sqrt_etas(steps, 0.1, end, 2.0, power, False)
    growth = (end / start) ** (1 / (steps - 1))
    expected = [start * growth ** ((i / (steps - 1)) ** power * (steps - 1)) for i in range(steps)]
    np.testing.assert_allclose(sqrt_etas, expected, rtol=1e-12)
    assert np.all(np.diff(sqrt_etas) > 0)


def test_schedule_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="steps=1: the exponential schedule needs at least 2 steps"):
        exponential_sqrt_etas(1, 0.04, 0.99, 2.0, 0.3, True)
    with pytest.raises(ValueError, match=r"etas_end=0.01: must be in \(0.02, 1\]"):
        exponential_sqrt_etas(15, 0.04, 0.01, 2.0, 0.3, False)
    with pytest.raises(ValueError, match="kappa=0"):
        exponential_sqrt_etas(15, 0.04, 0.99, 0, 0.3, False)


def test_space_timesteps_matches_reference_rule() -> None:
    assert space_timesteps(15, 4) == [0, 3, 7, 11]
    assert space_timesteps(15, 15) == list(range(15))
    assert space_timesteps(15, 1) == [0]
    assert space_timesteps(15, 5) == [0, 3, 6, 9, 12]
    assert space_timesteps(4, 4) == [0, 1, 2, 3]
    with pytest.raises(
        ValueError, match=r"timestep_respacing=16: must be between 1 and the number of steps \(15\)"
    ):
        space_timesteps(15, 16)


def test_config_defaults_are_the_released_models() -> None:
    cfg = DiffusionConfig()
    assert to_mapping(cfg) == {
        "steps": 15,
        "schedule": "exponential",
        "power": 0.3,
        "min_noise_level": 0.04,
        "etas_end": 0.99,
        "kappa": 2.0,
        "predict_type": "xstart",
        "normalize_input": True,
        "latent": True,
        "cap_sqrt_eta": True,
        "timestep_respacing": None,
    }
    assert from_mapping(DiffusionConfig, to_mapping(cfg), "x4.yaml:diffusion") == cfg


def test_config_errors_name_source_key_and_fix() -> None:
    with pytest.raises(ConfigError, match=r"x4.yaml:diffusion: diffusion.steps=1: .*at least 2 steps"):
        from_mapping(DiffusionConfig, {"steps": 1}, "x4.yaml:diffusion")
    with pytest.raises(ConfigError, match=r"x4.yaml:diffusion.predict_type: 'noise' is not one of"):
        from_mapping(DiffusionConfig, {"predict_type": "noise"}, "x4.yaml:diffusion")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) eta_end for DiffusionConfig"):
        from_mapping(DiffusionConfig, {"eta_end": 0.9}, "x4.yaml:diffusion")
    with pytest.raises(ConfigError, match=r"diffusion.timestep_respacing=20: must be between 1 and steps=15"):
        from_mapping(DiffusionConfig, {"timestep_respacing": 20}, "x4.yaml:diffusion")
    with pytest.raises(
        ConfigError, match=r"diffusion.etas_end=1.0: predict_type 'epsilon' divides by 1 - eta_T"
    ):
        from_mapping(DiffusionConfig, {"etas_end": 1.0, "predict_type": "epsilon"}, "x4.yaml:diffusion")
    with pytest.raises(ConfigError, match=r"diffusion.etas_end=0.01: must be above the first noise level"):
        from_mapping(DiffusionConfig, {"etas_end": 0.01}, "x4.yaml:diffusion")
