"""Learning-rate schedule: warm-up ramp, constant, cosine closed forms, checkpoint round trip."""

from __future__ import annotations

import math

import pytest
import torch

from difiisr.training.schedule import WarmupSchedule, make_scheduler


def test_warmup_ramps_linearly_to_one() -> None:
    s = WarmupSchedule(warmup_steps=4, max_steps=10, schedule="constant")
    assert [s(k) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_after_warmup_reaches_min_at_max_steps() -> None:
    s = WarmupSchedule(warmup_steps=2, max_steps=12, schedule="cosine", min_lr_ratio=0.1)
    assert s(1) == 1.0  # last warm-up update
    # update k (0-based) after warm-up: progress p = (k + 1 - 2) / 10
    for k in (2, 4, 6, 11):
        p = (k - 1) / 10
        assert s(k) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)), abs=1e-12)
    assert s(11) == pytest.approx(0.1)
    assert s(50) == pytest.approx(0.1)  # beyond max_steps it stays at the floor


def test_no_warmup_starts_at_full_lr() -> None:
    assert WarmupSchedule(0, 10, "constant")(0) == 1.0


def test_lambda_lr_state_round_trip_continues_identically() -> None:
    def make() -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
        return opt, make_scheduler(opt, 3, 10, "cosine", 0.2)

    opt, sched = make()
    lrs = []
    for _ in range(8):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    opt2, sched2 = make()
    opt_a, sched_a = make()
    for _ in range(4):
        opt_a.step()
        sched_a.step()
    sched2.load_state_dict(sched_a.state_dict())
    opt2.load_state_dict(opt_a.state_dict())
    resumed = []
    for _ in range(4):
        resumed.append(sched2.get_last_lr()[0])
        opt2.step()
        sched2.step()
    assert resumed == lrs[4:]
    assert lrs[0] == pytest.approx(0.5 / 3)


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="schedule='linear': use 'constant' or 'cosine'"):
        WarmupSchedule(1, 2, "linear")  # type: ignore[arg-type]
