"""``difiisr train`` argument handling and error exits (the happy path runs in test_processes.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from difiisr.cli.main import main
from difiisr.config import ConfigError, preset_path
from difiisr.errors import ExitCode


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


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``difiisr train ARGS`` as a user runs it (a separate process)."""
    return subprocess.run(
        [sys.executable, "-m", "difiisr.cli.main", "--log-level", "WARNING", "train", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_a_bad_set_value_names_the_override_and_the_file_separately() -> None:
    proc = _cli("--config", "train_tiny", "--set", "optim.lr=fast")
    assert proc.returncode == ExitCode.USAGE
    preset = preset_path("train_tiny")
    assert (
        f"difiisr train: --set optim.lr=fast (applied to {preset}): optim.lr: expected a number, got 'fast'"
        in proc.stderr
    )
    assert "train_tiny.yaml.optim" not in proc.stderr and "Traceback" not in proc.stderr


def test_an_empty_config_file_is_refused_not_run_on_defaults(tmp_path: Path, train_pairs: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("# settings to come\n")
    out = tmp_path / "out"
    proc = _cli(
        "--config", str(config), "--set", f"data.train_dir={train_pairs}", "--set", "data.batch_size=2",
        "--set", "max_steps=1", "--set", "mlflow.enabled=false", "--set", f"out_dir={out}",
    )  # fmt: skip
    assert proc.returncode == ExitCode.USAGE, proc.stdout
    assert f"difiisr train: {config}: the config file is empty" in proc.stderr
    assert not out.exists()


def test_a_duplicated_yaml_key_is_refused_naming_file_key_and_line(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("max_steps: 100\noptim:\n  lr: 0.001\n  warmup_steps: 10\n  lr: 0.01\n")
    proc = _cli("--config", str(config))
    assert proc.returncode == ExitCode.USAGE
    assert f"difiisr train: {config}: line 5: key 'optim.lr' is given twice (first on line 3)" in proc.stderr


def test_an_autoencoder_for_a_pixel_space_preset_is_refused(tmp_path: Path, train_pairs: Path) -> None:
    out = tmp_path / "out"
    proc = _cli(
        "--config", "train_tiny", "--set", f"data.train_dir={train_pairs}", "--set", "data.batch_size=2",
        "--set", "max_steps=1", "--set", "mlflow.enabled=false", "--set", f"out_dir={out}",
        "--set", f"model.autoencoder_ckpt={tmp_path / 'vae.pth'}",
    )  # fmt: skip
    assert proc.returncode == ExitCode.USAGE, proc.stdout
    assert (
        "preset 'tiny' works in pixel space and has no autoencoder; remove model.autoencoder_ckpt"
        in proc.stderr
    )
    assert not (out / "checkpoints").exists()


def test_every_training_error_is_a_difiisr_error() -> None:
    from difiisr.errors import DifiisrError
    from difiisr.models.checkpoint import CheckpointError
    from difiisr.training import EXIT_PREEMPTED, ResumeError, TrainError
    from difiisr.training.data import TrainDataError

    for error in (ConfigError, TrainError, ResumeError, TrainDataError, CheckpointError):
        assert issubclass(error, DifiisrError), error
    assert EXIT_PREEMPTED is ExitCode.PREEMPTED


def test_the_cli_exits_with_the_errors_own_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import difiisr.training
    from difiisr.errors import JobError

    def storage_down(cfg, **kwargs):
        raise JobError("s3://bucket/run: storage unavailable")

    monkeypatch.setattr(difiisr.training, "train", storage_down)
    assert main(["train", "--config", "train_tiny"]) == ExitCode.JOB_FAILED
    assert "difiisr train: s3://bucket/run: storage unavailable" in capsys.readouterr().err


def test_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and f"{int(ExitCode.PREEMPTED):>3}  {ExitCode.PREEMPTED.meaning}" in out
