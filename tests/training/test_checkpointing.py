"""Checkpoint discovery (complete vs partial folders), numbering, pruning, the pickle-free file format, SIGTERM."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from difiisr.training.checkpoint_format import (
    CHECKPOINT_FILES,
    TrainingObjects,
    read_checkpoint,
    write_checkpoint,
)
from difiisr.training.checkpointing import (
    ResumeError,
    StopFlag,
    TrainingState,
    latest_checkpoint,
    list_checkpoints,
    next_checkpoint_number,
    prune_checkpoints,
    write_marker,
)
from difiisr.training.ema import EMA
from difiisr.training.schedule import make_scheduler


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


def _objects(width: int = 3) -> TrainingObjects:
    torch.manual_seed(0)
    model = nn.Linear(width, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    return TrainingObjects(model, EMA(model, 0.9), optimizer, make_scheduler(optimizer, 2, 10, "cosine", 0.1))


def _step(o: TrainingObjects) -> None:
    o.model(torch.ones(4, o.model.in_features)).square().sum().backward()
    o.optimizer.step()
    o.optimizer.zero_grad()
    o.scheduler.step()
    o.ema.update(o.model)


def _write(folder: Path, objects: TrainingObjects) -> Path:
    record = {"step": 2, "epoch": 0, "batch": 2, "samples": 8, "num_processes": 1, "seed": 0}
    return write_checkpoint(folder, objects, record)


def test_checkpoint_files_round_trip_without_pickle(tmp_path: Path) -> None:
    saved = _objects()
    for _ in range(2):
        _step(saved)
    folder = _write(tmp_path / "checkpoint_0", saved)
    assert sorted(p.name for p in folder.iterdir()) == sorted(CHECKPOINT_FILES)

    loaded = _objects()
    record = read_checkpoint(folder, loaded)
    assert record["step"] == 2 and record["samples"] == 8
    torch.testing.assert_close(loaded.model.state_dict(), saved.model.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(loaded.ema.module.state_dict(), saved.ema.module.state_dict(), rtol=0, atol=0)
    assert (loaded.ema.decay, loaded.ema.num_updates) == (0.9, 2)
    a, b = saved.optimizer.state_dict(), loaded.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]  # betas come back as a tuple, lr as the scheduled value
    torch.testing.assert_close(a["state"], b["state"], rtol=0, atol=0)
    assert loaded.scheduler.state_dict() == saved.scheduler.state_dict()
    # both continue identically
    _step(saved)
    _step(loaded)
    torch.testing.assert_close(loaded.model.state_dict(), saved.model.state_dict(), rtol=0, atol=0)


def test_a_checkpoint_of_another_model_is_refused_naming_the_file(tmp_path: Path) -> None:
    folder = _write(tmp_path / "checkpoint_0", _objects(width=3))
    with pytest.raises(ResumeError, match=rf"{folder / 'model.safetensors'}.*shape"):
        read_checkpoint(folder, _objects(width=5))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["ema"].update(decay="0.9"), r"training_state.json: malformed training state"),
        (lambda d: d.update(format="other/1"), r"training_state.json: malformed .*format is 'other/1'"),
        (lambda d: d["optimizer"]["map"][0].__setitem__(1, {"tensor": "nope"}), r"tensor 'nope' is not in"),
        (
            lambda d: d["scheduler"]["map"].append(["x", {"eval": "1"}]),
            r"unexpected object with keys \['eval'\]",
        ),
    ],
)
def test_an_altered_training_state_is_refused_naming_the_file(tmp_path: Path, edit, message: str) -> None:
    folder = _write(tmp_path / "checkpoint_0", _objects())
    doc = json.loads((folder / "training_state.json").read_text())
    edit(doc)
    (folder / "training_state.json").write_text(json.dumps(doc))
    with pytest.raises(ResumeError, match=message):
        read_checkpoint(folder, _objects())


def test_a_marker_that_is_not_json_is_refused_not_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints" / "checkpoint_0"
    folder.mkdir(parents=True)
    (folder / "difiisr_state.json").write_bytes(b"\x80\x04not json")
    with pytest.raises(ResumeError, match=rf"{folder / 'difiisr_state.json'}: the completion marker is not"):
        latest_checkpoint(tmp_path)


def test_prune_keeps_the_newest_complete_and_drops_older_partial_folders(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    for n in (0, 1, 2, 3):
        (root / f"checkpoint_{n}").mkdir(parents=True)
    for n in (0, 2, 3):  # 1 was killed mid-save
        write_marker(root / f"checkpoint_{n}", {"step": n})
    removed = prune_checkpoints(tmp_path, 2)
    assert [p.name for p in removed] == ["checkpoint_0", "checkpoint_1"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_2", "checkpoint_3"]
    assert prune_checkpoints(tmp_path, 2) == []


def test_the_fp16_grad_scaler_state_round_trips(tmp_path: Path) -> None:
    saved = dataclasses.replace(_objects(), grad_scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    loss = saved.model(torch.ones(4, 3)).sum()
    saved.grad_scaler.scale(loss).backward()
    saved.grad_scaler.step(saved.optimizer)
    saved.grad_scaler.update(256.0)  # as after an overflow back-off
    folder = _write(tmp_path / "checkpoint_0", saved)
    loaded = dataclasses.replace(_objects(), grad_scaler=torch.amp.GradScaler("cpu"))
    read_checkpoint(folder, loaded)
    assert loaded.grad_scaler.state_dict() == saved.grad_scaler.state_dict()
    assert loaded.grad_scaler.get_scale() == 256.0
