"""``InferenceSettings``: one set of defaults, one validation, lossless conversions (params, records, CLI)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json

import pytest

from difiisr.diffusion import SAMPLERS
from difiisr.inference.settings import SAMPLER_NAMES, InferenceSettings, SettingsError


def test_defaults_are_the_one_set_every_path_uses() -> None:
    s = InferenceSettings()
    assert (s.sampler, s.steps, s.seed, s.tile, s.tile_overlap, s.batch, s.precision) == (
        "onestep", None, 0, 256, 32, 1, "auto",
    )  # fmt: skip
    assert (s.guidance, s.guidance_steps, s.guidance_schedule, s.guidance_spectral) == (
        "none",
        None,
        "constant",
        0.0,
    )
    assert s.guidance_checkpoint is False and isinstance(s.guidance_scale, float)
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
        (
            {"guidance": "lr-consistency"},
            "guidance lr-consistency with sampler onestep: one-step sampling makes a single network call.*"
            "use --sampler ddim or ancestral, or --guidance none",
        ),
        (
            {"guidance": "dps", "sampler": "ddim"},
            "guidance 'dps' is unknown; use one of none, lr-consistency",
        ),
        (
            {"sampler": "ddim", "guidance_scale": 2.0},
            "guidance_scale set without guidance: they have no effect.*add --guidance lr-consistency, or drop "
            "--guidance-scale",
        ),
        (
            {"sampler": "ddim", "guidance_spectral": 0.1, "guidance_steps": 2},
            "guidance_spectral, guidance_steps set without guidance",
        ),
        (
            {"sampler": "ddim", "guidance": "lr-consistency", "guidance_scale": -1.0},
            "guidance_scale=-1.0: must be",
        ),
        (
            {"sampler": "ddim", "guidance": "lr-consistency", "guidance_scale": float("nan")},
            "must be a finite",
        ),
        (
            {"sampler": "ddim", "guidance": "lr-consistency", "guidance_steps": -1},
            "guidance_steps=-1: must be >= 1",
        ),
        (
            {"sampler": "ddim", "guidance": "lr-consistency", "guidance_schedule": "cos"},
            "guidance_schedule 'cos'",
        ),
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
        "precision": "fp32", "guidance": "none", "guidance_scale": 8.0, "guidance_steps": 0, "guidance_space": "x0",
        "guidance_schedule": "constant", "guidance_spectral": 0.0, "guidance_checkpoint": False,
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


GUIDED = InferenceSettings(
    sampler="ancestral",
    steps=3,
    guidance="lr-consistency",
    guidance_scale=2.5,
    guidance_steps=2,
    guidance_space="xt",
    guidance_schedule="linear",
    guidance_spectral=0.05,
    guidance_checkpoint=True,
)


def test_guidance_fields_round_trip_through_params_records_and_flags() -> None:
    params = GUIDED.to_params()
    assert {k: params[k] for k in params if k.startswith("guidance")} == {
        "guidance": "lr-consistency", "guidance_scale": 2.5, "guidance_steps": 2, "guidance_space": "xt",
        "guidance_schedule": "linear", "guidance_spectral": 0.05, "guidance_checkpoint": True,
    }  # fmt: skip
    assert InferenceSettings.from_params(params) == GUIDED
    assert InferenceSettings.from_record(GUIDED.to_record()) == GUIDED
    assert GUIDED.to_record()["inference.guidance_checkpoint"] == "True"
    # pipeline parameters arrive as strings; guidance_steps 0 = every step; scale given as an int is a float
    parsed = InferenceSettings.from_params(
        {"sampler": "ddim", "guidance": "lr-consistency", "guidance_scale": "3", "guidance_steps": "0",
         "guidance_checkpoint": "false", "guidance_spectral": 1}
    )  # fmt: skip
    assert parsed == InferenceSettings(
        sampler="ddim", guidance="lr-consistency", guidance_scale=3.0, guidance_spectral=1.0
    )
    assert isinstance(parsed.guidance_scale, float) and parsed.to_params()["guidance_spectral"] == 1.0
    with pytest.raises(SettingsError, match="inference parameter guidance_scale must be a number, got 'big'"):
        InferenceSettings.from_params({"guidance_scale": "big"})
    with pytest.raises(SettingsError, match="guidance_checkpoint must be true or false, got 'maybe'"):
        InferenceSettings.from_params({"guidance_checkpoint": "maybe"})

    parser = argparse.ArgumentParser()
    InferenceSettings.add_arguments(parser)
    args = parser.parse_args(
        ["--sampler", "ancestral", "--steps", "3", "--guidance", "lr-consistency", "--guidance-scale", "2.5",
         "--guidance-steps", "2", "--guidance-space", "xt", "--guidance-schedule", "linear",
         "--guidance-spectral", "0.05", "--guidance-checkpoint"]
    )  # fmt: skip
    assert InferenceSettings.from_args(args) == GUIDED
    assert InferenceSettings.from_args(parser.parse_args(["--no-guidance-checkpoint"])) == InferenceSettings()
    text = parser.format_help()
    assert "--guidance {none,lr-consistency}" in text and "--guidance-schedule {constant,linear,eta}" in text
    assert "--guidance-space {x0,xt}" in text


def test_digest_covers_guidance_only_when_it_is_on() -> None:
    unguided = InferenceSettings(sampler="ddim", steps=2, seed=3)
    # an unguided digest is what it was before guidance existed (the fields present then, canonical JSON)
    before = {"sampler": "ddim", "steps": 2, "seed": 3, "tile": 256, "tile_overlap": 32, "precision": "auto"}
    blob = json.dumps(before, sort_keys=True, separators=(",", ":")).encode()
    assert unguided.digest() == hashlib.sha256(blob).hexdigest()[:16]
    on = unguided.replace(guidance="lr-consistency")
    assert on.digest() != unguided.digest()
    for change in ({"guidance_scale": 2.0}, {"guidance_steps": 1}, {"guidance_schedule": "eta"},
                   {"guidance_spectral": 0.1}, {"guidance_space": "xt"}):  # fmt: skip
        assert on.replace(**change).digest() != on.digest(), change
    assert on.replace(guidance_checkpoint=True).digest() == on.digest()  # memory only, same pixels


def test_guidance_steps_are_checked_against_the_run() -> None:
    s = InferenceSettings(sampler="ddim", guidance="lr-consistency", guidance_steps=3, guidance_space="xt")
    s.check_steps(4)
    with pytest.raises(
        SettingsError, match="guidance_steps=3: this run has 3 steps, of which 2 can be guided in space xt"
    ):
        s.replace(steps=3).check_steps(4)
    with pytest.raises(SettingsError, match="a one-step chain has no step that guidance can move"):
        InferenceSettings(
            sampler="ddim", steps=1, guidance="lr-consistency", guidance_space="xt"
        ).check_steps(4)
    # estimate space also guides t = 0, whose corrected x0_hat is the output
    in_x0 = s.replace(guidance_space="x0", steps=3)
    in_x0.check_steps(4)
    InferenceSettings(sampler="ddim", steps=1, guidance="lr-consistency").check_steps(4)
    with pytest.raises(SettingsError, match="of which 3 can be guided in space x0"):
        in_x0.replace(guidance_steps=4).check_steps(4)


def test_describe_names_the_guidance() -> None:
    assert GUIDED.describe().endswith("guidance lr-consistency scale 2.5 linear over 2 steps, spectral 0.05")
    assert "guidance" not in InferenceSettings().describe()
