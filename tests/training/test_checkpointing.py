"""Checkpoint discovery (complete vs partial folders), numbering, and the SIGTERM flag."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from difiisr.training.checkpointing import (
    StopFlag,
    TrainingState,
    latest_checkpoint,
    list_checkpoints,
    next_checkpoint_number,
    write_marker,
)


def test_latest_skips_incomplete_and_numbers_sort_numerically(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for n in (2, 10, 11):
        (root / f"checkpoint_{n}").mkdir(parents=True)
    (root / "not_a_checkpoint").mkdir()
    write_marker(root / "checkpoint_2", {"step": 4})
    write_marker(root / "checkpoint_10", {"step": 20})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_2", "checkpoint_10", "checkpoint_11"]
    assert latest_checkpoint(tmp_path) == root / "checkpoint_10"  # 11 has no marker: killed mid-save
    assert next_checkpoint_number(tmp_path) == 12
    assert latest_checkpoint(tmp_path / "empty") is None
    assert next_checkpoint_number(tmp_path / "empty") == 0


def test_training_state_round_trip() -> None:
    s = TrainingState()
    s.load_state_dict({"step": 5, "epoch": 2, "batch": 1, "samples": 40})
    other = TrainingState()
    other.load_state_dict(s.state_dict())
    assert other.state_dict() == {"step": 5, "epoch": 2, "batch": 1, "samples": 40}


def test_sigterm_sets_flag_and_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    flag = StopFlag()
    with flag.installed():
        assert not flag.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.requested and flag.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
