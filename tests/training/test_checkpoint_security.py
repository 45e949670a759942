"""Resuming never runs code from a checkpoint folder: a crafted pickle in any file slot is refused, never executed.

Issue 9 item 1: Accelerate's ``load_state`` unpickled ``custom_checkpoint_N.pkl`` with ``weights_only=False``, so a
planted file ran its payload on ``difiisr train --resume``. Each test plants a pickle whose payload writes a
marker file, resumes through the real CLI, and checks that nothing ran, nothing trained, and the refusal names the
file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from difiisr.cli.main import main
from difiisr.errors import ExitCode
from difiisr.training.checkpointing import latest_checkpoint, list_checkpoints

#: The files a difiisr checkpoint folder holds (model, EMA, optimizer tensors, JSON state, completion marker).
CHECKPOINT_FILES = (
    "model.safetensors",
    "ema.safetensors",
    "optimizer.safetensors",
    "training_state.json",
    "difiisr_state.json",
)
#: File names Accelerate's ``load_state`` reads (pickles, some with ``weights_only=False``): never read now.
ACCELERATE_SLOTS = (
    "custom_checkpoint_0.pkl",
    "custom_checkpoint_1.pkl",
    "custom_checkpoint_2.pkl",
    "random_states_0.pkl",
    "optimizer.bin",
    "scheduler.bin",
    "sampler.bin",
    "scaler.pt",
    "pytorch_model.bin",
)


class _Payload:
    """Unpickling this object runs ``exec``: it writes ``marker`` (what an attacker's payload would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: D105
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def _train_args(train_pairs: Path, out: Path) -> list[str]:
    return [
        "train", "--config", "train_tiny", "--set", f"data.train_dir={train_pairs}", "--set", "data.batch_size=2",
        "--set", "mlflow.enabled=false", "--set", f"out_dir={out}", "--set", "max_steps=3",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory, train_pairs: Path) -> Path:
    """A run stopped after one step: one complete checkpoint folder to tamper with."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert main([*_train_args(train_pairs, out), "--stop-after", "1"]) == 0
    assert latest_checkpoint(out) is not None
    return out


def _tampered_copy(stopped_run: Path, tmp_path: Path, slot: str) -> tuple[Path, Path, Path]:
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save(_Payload(marker), checkpoint / slot)
    return out, checkpoint, marker


def test_the_checkpoint_folder_holds_only_the_known_files(stopped_run: Path) -> None:
    # a new file slot must be added to CHECKPOINT_FILES so that the tests below plant a pickle in it too
    checkpoint = latest_checkpoint(stopped_run)
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(CHECKPOINT_FILES)


@pytest.mark.parametrize("slot", CHECKPOINT_FILES + ACCELERATE_SLOTS)
def test_a_pickle_in_any_slot_is_refused_naming_the_file(
    stopped_run: Path, train_pairs: Path, tmp_path: Path, slot: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out, checkpoint, marker = _tampered_copy(stopped_run, tmp_path, slot)
    code = main([*_train_args(train_pairs, out), "--resume"])
    err = capsys.readouterr().err
    assert not marker.exists(), f"the payload in {slot} ran"
    assert code == ExitCode.USAGE, err
    assert str(checkpoint / slot) in err and "difiisr train:" in err
    assert list_checkpoints(out) == [checkpoint]  # nothing trained, nothing saved
    assert not (out / "model").exists()


@pytest.mark.slow
def test_cli_subprocess_refuses_a_planted_custom_checkpoint(
    stopped_run: Path, train_pairs: Path, tmp_path: Path
) -> None:
    # the reported attack, exactly as a user (or the Kubernetes TrainJob) runs it
    out, checkpoint, marker = _tampered_copy(stopped_run, tmp_path, "custom_checkpoint_0.pkl")
    proc = subprocess.run(
        [sys.executable, "-m", "difiisr.cli.main", "--log-level", "WARNING", *_train_args(train_pairs, out)]
        + ["--resume"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert not marker.exists(), "the planted payload ran"
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{checkpoint / 'custom_checkpoint_0.pkl'}" in proc.stderr
