"""Inference: the shared engine that turns LR into SR.

``InferenceSettings`` (how), ``Upscaler`` (the model on a device), tiling, and the output records that make
reruns idempotent. Every path that upscales (CLI, evaluation, pyfunc, training validation, batch job) uses it.
The torch-based names are imported on first use, so ``difiisr.inference.settings`` (and the pipelines that only
need the settings) load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from difiisr.inference.settings import DEVICES, InferenceSettings, SettingsError

_LAZY = {
    "UpscaleError": "difiisr.inference.upscaler",
    "Upscaler": "difiisr.inference.upscaler",
    "resolve_device": "difiisr.inference.upscaler",
    "resolve_dtype": "difiisr.inference.upscaler",
    "weights_digest": "difiisr.inference.upscaler",
    "Tile": "difiisr.inference.tiling",
    "TileBlender": "difiisr.inference.tiling",
    "TilingError": "difiisr.inference.tiling",
    "plan_tiles": "difiisr.inference.tiling",
    "reflect_pad": "difiisr.inference.tiling",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'difiisr.inference' has no attribute {name!r}")


__all__ = ["DEVICES", "InferenceSettings", "SettingsError", *_LAZY]
