"""EMA: closed form of the average, integer buffers copied, state round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from difiisr.training.ema import EMA


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("index", torch.tensor([0, 1]))


def test_average_matches_closed_form_for_constant_weights() -> None:
    net = Net()
    w0 = net.lin.weight.detach().clone()
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.lin.weight.fill_(2.0)
        net.index.copy_(torch.tensor([5, 6]))
    for _ in range(5):
        ema.update(net)
    # shadow_k = d^k w0 + (1 - d^k) w
    expected = 0.9**5 * w0 + (1 - 0.9**5) * 2.0
    torch.testing.assert_close(ema.module.lin.weight, expected, rtol=1e-6, atol=1e-6)
    assert ema.module.index.tolist() == [5, 6]
    assert ema.num_updates == 5


def test_shadow_is_frozen_and_independent() -> None:
    net = Net()
    ema = EMA(net, decay=0.5)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training
    with torch.no_grad():
        net.lin.bias.add_(1.0)
    assert not torch.equal(ema.module.lin.bias, net.lin.bias)


def test_state_dict_round_trip() -> None:
    net = Net()
    ema = EMA(net, decay=0.99)
    with torch.no_grad():
        net.lin.weight.mul_(3)
    ema.update(net)
    other = EMA(Net(), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.99 and other.num_updates == 1
    torch.testing.assert_close(other.module.lin.weight, ema.module.lin.weight, rtol=0, atol=0)


def test_invalid_decay_message() -> None:
    with pytest.raises(ValueError, match=r"EMA decay=1.0: must be in \[0, 1\)"):
        EMA(Net(), decay=1.0)
