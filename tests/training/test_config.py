"""Training config: shipped presets, overrides, strict keys, validation messages."""

from __future__ import annotations

import pytest

from difiisr.config import ConfigError, from_mapping
from difiisr.training.config import TrainConfig, load_train_config


def test_x4_preset_is_the_reference_recipe() -> None:
    cfg = load_train_config("train_x4")
    assert cfg.model.preset == "x4"
    assert cfg.optim.lr == 5e-5
    assert cfg.optim.warmup_steps == 5000
    assert cfg.optim.weight_decay == 0.0
    assert cfg.data.batch_size == 64
    assert cfg.data.gt_size == 256
    assert cfg.data.mode == "online"
    assert cfg.ema_decay == 0.999
    assert cfg.mixed_precision == "bf16"


def test_tiny_preset_loads_and_is_pixel_space_64() -> None:
    cfg = load_train_config("train_tiny")
    assert cfg.model.preset == "tiny"
    assert cfg.data.gt_size == 64
    assert cfg.data.mode == "paired"


def test_overrides_are_typed_and_nested() -> None:
    cfg = load_train_config(
        "train_tiny",
        ["optim.lr=0.001", "data.batch_size=2", "optim.betas=[0.8, 0.9]", "mlflow.enabled=false"],
    )
    assert cfg.optim.lr == 1e-3
    assert cfg.data.batch_size == 2
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.mlflow.enabled is False


def test_round_trip_through_mapping() -> None:
    cfg = load_train_config("train_x4")
    assert from_mapping(TrainConfig, cfg.to_dict(), "round-trip") == cfg


def test_unknown_key_names_the_file_and_key() -> None:
    with pytest.raises(ConfigError, match=r"train_tiny\.yaml.*unknown key\(s\) lrr for OptimConfig"):
        load_train_config("train_tiny", ["optim.lrr=1"])


def test_invalid_value_message_names_key_and_fix(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  gt_size: 62\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: data\.gt_size=62: must be a positive multiple of 4"):
        load_train_config(path)


def test_degradation_only_in_online_mode() -> None:
    with pytest.raises(ConfigError, match="data.degradation is only used with data.mode=online"):
        load_train_config("train_tiny", ["data.degradation={noise_range: [1, 2]}"])


def test_literal_choices_are_enforced() -> None:
    with pytest.raises(
        ConfigError, match=r"optim\.schedule: 'linear' is not one of \['constant', 'cosine'\]"
    ):
        load_train_config("train_tiny", ["optim.schedule=linear"])
