"""Typed config loading: strict keys, type coercion, overrides and messages that name the key and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from difiisr.config import (
    ConfigError,
    apply_overrides,
    flatten,
    from_mapping,
    load_config,
    load_yaml,
    preset_path,
    to_mapping,
)


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    inner: Inner = Inner()
    maybe: Inner | None = None
    path: Path | None = None


def test_builds_nested_dataclasses_and_coerces_types():
    cfg = from_mapping(
        Outer, {"name": "x", "steps": 3, "inner": {"lr": 1, "betas": [0.5, 0.6]}, "path": "/tmp/a"}
    )
    assert cfg == Outer("x", 3, "a", Inner(1.0, (0.5, 0.6)), None, Path("/tmp/a"))
    assert isinstance(cfg.inner.lr, float)
    assert to_mapping(cfg)["inner"] == {"lr": 1.0, "betas": [0.5, 0.6]}
    assert flatten(to_mapping(cfg))["inner.betas"] == [0.5, 0.6]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"name": "x", "stepz": 1},
            r"cfg.yaml: unknown key\(s\) stepz for Outer; accepted keys: inner, maybe, mode",
        ),
        ({"name": "x", "steps": "ten"}, r"cfg.yaml.steps: expected an integer, got 'ten'"),
        ({"name": "x", "steps": True}, r"cfg.yaml.steps: expected an integer"),
        ({"name": "x", "mode": "c"}, r"cfg.yaml.mode: 'c' is not one of \['a', 'b'\]"),
        ({"name": "x", "inner": {"lr": "fast"}}, r"cfg.yaml.inner.lr: expected a number, got 'fast'"),
        ({"name": "x", "inner": {"betas": [1.0]}}, r"cfg.yaml.inner.betas: expected 2 values, got 1"),
        ({"name": "x", "inner": 3}, r"cfg.yaml.inner: expected a mapping for Inner"),
        ({}, r"cfg.yaml: .*missing 1 required positional argument: 'name'"),
    ],
)
def test_errors_name_the_source_and_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_mapping(Outer, data, "cfg.yaml")


def test_overrides_parse_values_as_yaml_and_numbers():
    base = {"optim": {"lr": 1.0, "betas": [0.9, 0.99]}, "name": "a"}
    out = apply_overrides(base, ["optim.lr=1e-4", "optim.betas=[0.5, 0.6]", "name=b", "new.key=true", "n=7"])
    assert out == {"optim": {"lr": 1e-4, "betas": [0.5, 0.6]}, "name": "b", "new": {"key": True}, "n": 7}
    assert base["optim"]["lr"] == 1.0  # the input is not modified
    with pytest.raises(ConfigError, match=r"'optim\.lr': expected KEY=VALUE"):
        apply_overrides(base, ["optim.lr"])
    with pytest.raises(ConfigError, match=r"name is not a section"):
        apply_overrides(base, ["name.x=1"])


def test_yaml_files_and_presets(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("name: x\nsteps: 2\n")
    assert from_mapping(Outer, load_yaml(good), str(good)).steps == 2
    with pytest.raises(ConfigError, match=r"missing.yaml: config file not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        load_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list.yaml: top level must be a mapping"):
        load_yaml(lst)
    assert preset_path("x4").name == "x4.yaml"
    with pytest.raises(ConfigError, match=r"unknown preset 'x5'; shipped presets: .*tiny.*x4"):
        preset_path("x5")


def test_config_error_is_a_difiisr_usage_error_and_a_value_error():
    from difiisr.errors import DifiisrError, ExitCode

    exc = ConfigError("x")
    assert isinstance(exc, DifiisrError) and isinstance(exc, ValueError)
    assert exc.exit_code == ExitCode.USAGE


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "---\n"])
def test_an_empty_yaml_file_is_an_error_not_the_defaults(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"{path}: the config file is empty \(no keys"):
        load_yaml(path)


def test_a_duplicated_key_names_the_file_the_dotted_key_and_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: x\ninner:\n  lr: 1\n  betas: [0.5, 0.6]\n  lr: 2\n")
    with pytest.raises(
        ConfigError, match=rf"{path}: line 5: key 'inner.lr' is given twice \(first on line 3\)"
    ):
        load_yaml(path)
    top = tmp_path / "top.yaml"
    top.write_text("steps: 1\nname: x\nsteps: 2\n")
    with pytest.raises(ConfigError, match=r"line 3: key 'steps' is given twice \(first on line 1\)") as info:
        load_yaml(top)
    assert info.value.key == "steps"


def test_keys_that_differ_in_type_and_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text('1: a\n"1": b\nbase: &b {lr: 1}\ninner:\n  <<: *b\n  lr: 2\n')
    assert load_yaml(path) == {1: "a", "1": "b", "base": {"lr": 1}, "inner": {"lr": 2}}


def test_load_config_blames_the_override_or_the_file_separately(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ninner:\n  lr: 0.5\n")
    assert load_config(Outer, path, ["inner.lr=2"]).inner.lr == 2.0
    # a bad value from --set: the override is named, then the file it was applied to, then the key
    with pytest.raises(ConfigError) as info:
        load_config(Outer, path, ["steps=3", "inner.lr=fast"])
    assert (
        str(info.value) == f"--set inner.lr=fast (applied to {path}): inner.lr: expected a number, got 'fast'"
    )
    assert f"{path}.inner" not in str(info.value)
    # the same bad value in the file: the file is named, the key after it
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninner:\n  lr: fast\n")
    with pytest.raises(ConfigError) as info:
        load_config(Outer, bad, ["steps=3"])
    assert str(info.value) == f"{bad}: inner.lr: expected a number, got 'fast'"
    # an unknown key set by an override, and a whole section replaced by one
    with pytest.raises(
        ConfigError, match=rf"^--set inner.lrr=1 \(applied to {path}\): inner: unknown key\(s\) lrr"
    ):
        load_config(Outer, path, ["inner.lrr=1"])
    with pytest.raises(ConfigError, match=r"^--set inner=3 .*inner: expected a mapping for Inner"):
        load_config(Outer, path, ["inner=3"])
    # no file: defaults plus overrides
    assert load_config(Outer, None, ["name=y"]).name == "y"
    with pytest.raises(ConfigError, match=r"^--set steps=x: steps: expected an integer"):
        load_config(Outer, None, ["name=y", "steps=x"])


def test_quoted_override_values_stay_strings() -> None:
    """An id that looks like a number (an MLflow run id such as 0123...) survives when quoted; unquoted 1e-4 is a number."""
    data = apply_overrides({}, ["a='0123'", 'b="1e-4"', "c=1e-4", "d=0123abc"])
    assert data == {"a": "0123", "b": "1e-4", "c": 1e-4, "d": "0123abc"}
