"""``InferenceSettings``: one set of defaults, one validation, lossless conversions (params, records, CLI)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from difiisr.diffusion import SAMPLERS
from difiisr.inference.settings import SAMPLER_NAMES, InferenceSettings, SettingsError


def test_defaults_are_the_one_set_every_path_uses() -> None:
    s = InferenceSettings()
    assert (s.sampler, s.steps, s.seed, s.tile, s.tile_overlap, s.batch, s.precision) == (
        "onestep", None, 0, 256, 32, 1, "auto",
    )  # fmt: skip
    assert set(SAMPLERS) == set(SAMPLER_NAMES)  # the typed sampler table and the settings agree


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 4}, "steps=4 with sampler onestep: one-step sampling always runs at the trained schedule"),
        ({"sampler": "ddim", "steps": 0}, r"steps=0: must be >= 1"),
        ({"sampler": "ancestral", "steps": -2}, r"steps=-2: must be >= 1"),
        ({"sampler": "euler"}, "sampler 'euler' is unknown; use one of onestep, ddim, ancestral"),
        ({"tile": 0}, r"tile=0: must be >= 1 LR pixel \(or unset/0 for no tiling\)"),
        ({"tile": 16, "tile_overlap": 16}, "tile_overlap=16 must be smaller than tile=16"),
        ({"tile_overlap": -1}, "tile_overlap=-1: must be >= 0"),
        ({"batch": 0}, "batch=0: must be >= 1"),
        ({"precision": "fp8"}, "precision 'fp8' is unknown"),
        ({"seed": 1.5}, "seed=1.5: must be a whole number"),
    ],
)
def test_invalid_settings_are_refused_with_the_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        InferenceSettings(**kwargs)


def test_steps_above_the_models_schedule_are_refused() -> None:
    with pytest.raises(SettingsError, match="steps=9: this model's schedule has 4 steps; use 1..4"):
        InferenceSettings(sampler="ddim", steps=9).check_steps(4)
    InferenceSettings(sampler="ddim", steps=4).check_steps(4)


def test_params_round_trip_with_zero_meaning_none() -> None:
    s = InferenceSettings(
        sampler="ancestral", steps=3, seed=7, tile=None, tile_overlap=8, batch=2, precision="fp32"
    )
    params = s.to_params()
    assert params == {
        "sampler": "ancestral", "steps": 3, "seed": 7, "tile": 0, "tile_overlap": 8, "batch": 2,
        "precision": "fp32",
    }  # fmt: skip
    assert InferenceSettings.from_params(params) == s
    # partial params keep the defaults; strings (JSON/pipeline parameters) are parsed; 0 = the preset's steps
    assert InferenceSettings.from_params({"seed": "5", "steps": 0, "sampler": "ddim"}) == InferenceSettings(
        sampler="ddim", seed=5
    )
    with pytest.raises(SettingsError, match="unknown inference parameter"):
        InferenceSettings.from_params({"sed": 1})
    with pytest.raises(SettingsError, match="inference parameter seed must be a whole number"):
        InferenceSettings.from_params({"seed": "abc"})


def test_records_round_trip_and_the_digest_ignores_batch_only() -> None:
    s = InferenceSettings(sampler="ddim", steps=2, seed=3, tile=64, tile_overlap=16, batch=4)
    record = s.to_record()
    assert record["inference.sampler"] == "ddim" and record["inference.digest"] == s.digest()
    assert all(isinstance(v, str) for v in record.values())
    assert InferenceSettings.from_record({**record, "unrelated": "x"}) == s
    assert s.replace(batch=1).digest() == s.digest()  # batch only changes speed
    for change in ({"seed": 4}, {"tile": 32}, {"tile_overlap": 8}, {"precision": "bf16"}, {"steps": 1}):
        assert s.replace(**change).digest() != s.digest(), change


def test_cli_flags_round_trip_and_refuse_steps_zero() -> None:
    parser = argparse.ArgumentParser()
    InferenceSettings.add_arguments(parser)
    assert InferenceSettings.from_args(parser.parse_args([])) == InferenceSettings()
    args = parser.parse_args(
        [
            "--sampler",
            "ancestral",
            "--steps",
            "2",
            "--seed",
            "9",
            "--tile",
            "0",
            "--tile-overlap",
            "4",
            "--batch",
            "3",
            "--precision",
            "fp32",
        ]
    )
    assert InferenceSettings.from_args(args) == InferenceSettings(
        sampler="ancestral", steps=2, seed=9, tile=None, tile_overlap=4, batch=3, precision="fp32"
    )
    with pytest.raises(SettingsError, match="--steps 0: must be >= 1; leave --steps out"):
        InferenceSettings.from_args(parser.parse_args(["--sampler", "ddim", "--steps", "0"]))
    # every field has a flag whose help shows the class default
    text = parser.format_help()
    for f in dataclasses.fields(InferenceSettings):
        assert "--" + f.name.replace("_", "-") in text
    assert "(default 256)" in text and "(default onestep)" in text
