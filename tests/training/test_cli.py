"""``difiisr train`` argument handling and error exits (the happy path runs in test_processes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from difiisr.cli.main import main


def test_missing_config_file_exits_2_with_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--config", str(tmp_path / "nope.yaml")])
    assert code == 2
    assert f"difiisr train: {tmp_path / 'nope.yaml'}: config file not found" in capsys.readouterr().err


def test_bad_data_folder_exits_2_naming_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "train",
        "--config",
        "train_tiny",
        "--set",
        f"data.train_dir={tmp_path}",
        "--set",
        "mlflow.enabled=false",
    ]
    code = main([*args, "--set", f"out_dir={tmp_path / 'out'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: not a pairs folder (needs hr/ and lr/); make one with 'difiisr degrade'" in err


def test_unknown_override_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", "train_tiny", "--set", "optim.momentum=0.9"]) == 2
    assert "unknown key(s) momentum for OptimConfig" in capsys.readouterr().err
