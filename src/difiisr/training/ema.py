"""Exponential moving average of a network's weights (decay 0.999 in the reference recipe)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """Shadow copy of ``model``: after each optimizer step ``shadow = decay * shadow + (1 - decay) * weights``.

    Floating-point parameters and buffers are averaged; integer buffers (e.g. ``relative_position_index``) are
    copied. The shadow is a full module (``.module``), frozen and in eval mode, used for validation and export.
    Training checkpoints store ``.module`` as safetensors and ``decay``/``num_updates`` as JSON
    (``difiisr.training.checkpoint_format``); ``state_dict``/``load_state_dict`` give the same as one mapping.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay={decay}: must be in [0, 1) (the reference uses 0.999)")
        self.decay = float(decay)
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow towards ``model``'s current weights (same architecture, any device)."""
        source = model.state_dict()
        for name, shadow in self.module.state_dict().items():
            value = source[name].detach()
            if shadow.dtype.is_floating_point:
                shadow.lerp_(value.to(device=shadow.device, dtype=shadow.dtype), 1.0 - self.decay)
            else:
                shadow.copy_(value)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        """``{"decay", "num_updates", "shadow": module state dict}`` (tensors as stored, not copied)."""
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()`` output (strict key check on the shadow weights)."""
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.module.load_state_dict(state["shadow"], strict=True)
