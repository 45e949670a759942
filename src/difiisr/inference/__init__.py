"""Inference: the ``Upscaler`` (LR -> x4 SR with a ResShift-family model) and tiled processing."""

from difiisr.inference.tiling import Tile, TileBlender, TilingError, plan_tiles, reflect_pad
from difiisr.inference.upscaler import (
    DEFAULT_BATCH,
    DEFAULT_TILE_OVERLAP,
    SAMPLERS,
    UpscaleError,
    Upscaler,
    resolve_device,
    resolve_dtype,
)

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_TILE_OVERLAP",
    "SAMPLERS",
    "Tile",
    "TileBlender",
    "TilingError",
    "UpscaleError",
    "Upscaler",
    "plan_tiles",
    "reflect_pad",
    "resolve_device",
    "resolve_dtype",
]
