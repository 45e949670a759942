"""metrics.jsonl: window records of every loss term, truncation to the resumed step, and the loss plug point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from difiisr.training import loop as training_loop
from difiisr.training import train
from difiisr.training.metrics import MetricsLog, truncate_metrics
from difiisr.training.tracking import NullTracker


def test_truncate_keeps_steps_up_to_the_resumed_one_and_drops_cut_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "lo')  # killed mid-line
    assert truncate_metrics(path, 2) == 3
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:2]
    assert truncate_metrics(path, 2) == 0  # nothing left to drop: the file is not rewritten
    assert truncate_metrics(path, 0) == 2 and path.read_text() == ""
    assert truncate_metrics(tmp_path / "missing.jsonl", 3) == 0 and not (tmp_path / "missing.jsonl").exists()


def test_records_are_window_means_of_every_term(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, NullTracker(), global_batch=4)
    for loss, aux in ((1.0, 10.0), (3.0, 30.0)):
        log.add_step({"loss": torch.tensor(loss), "aux": torch.tensor(aux)})
    first = log.write(2, {"lr": 0.5})
    log.add_step({"loss": torch.tensor(5.0), "aux": torch.tensor(50.0)})
    second = log.write(3, {"lr": 0.25})
    assert (first["loss"], first["aux"], first["lr"]) == (2.0, 20.0, 0.5)
    assert (second["loss"], second["aux"]) == (5.0, 50.0) and first["samples_per_s"] > 0
    assert log.losses == [1.0, 3.0, 5.0]
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [2, 3]
    silent = MetricsLog(None, NullTracker(), global_batch=4)  # a process that writes nothing
    silent.add_step({"loss": torch.tensor(1.0)})
    assert silent.write(1, {})["loss"] == 1.0 and silent.losses == [1.0]


def test_extra_loss_terms_from_compute_losses_are_logged(
    tmp_path: Path, train_pairs: Path, tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the plug point for more loss terms: every key besides "loss" is logged as a window mean
    plain = training_loop.compute_losses
    t_sums: list[float] = []

    def with_aux(diffusion, unet, z0, zy, lq, t, noise):
        terms = plain(diffusion, unet, z0, zy, lq, t, noise)
        t_sums.append(float(t.sum()))
        return {**terms, "aux": 2.0 * terms["loss"].detach() + t_sums[-1]}

    monkeypatch.setattr(training_loop, "compute_losses", with_aux)
    result = train(tiny_config(tmp_path / "run", train_pairs, max_steps=2, log_every=2))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2] and len(t_sums) == 2  # one micro-batch per step
    assert records[0]["loss"] == pytest.approx(sum(result.losses) / 2, rel=1e-6)
    expected = sum(2.0 * loss + t for loss, t in zip(result.losses, t_sums, strict=True)) / 2
    assert records[0]["aux"] == pytest.approx(expected, rel=1e-6)
