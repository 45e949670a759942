"""Tiled inference: padding to the network's size multiple, tile plans in LR pixels, Gaussian blending.

Everything here is pure tensor geometry (no networks, no I/O). A tile plan is cut in LR pixel units on an image
that is already padded to the network's size multiple; every tile has the same size (a multiple too), so tiles
stack into batches. Tile outputs are blended in the output (x ``sf``) space with separable Gaussian weights that
fall to ~0 at tile edges, and the weighted sum is normalised, so the blend has no hard edge anywhere.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F

from difiisr.errors import DifiisrError

T = TypeVar("T")

#: Gaussian sigma of the blending weights as a fraction of the tile side (edge weight exp(-12.5) ~ 4e-6).
DEFAULT_SIGMA_FRACTION = 0.1


class TilingError(DifiisrError, ValueError):
    """Tile size, overlap or image geometry that cannot be tiled; the message says which value to change."""


@dataclasses.dataclass(frozen=True)
class Tile:
    """One tile in LR pixels: rows ``top:top+height``, columns ``left:left+width`` of the padded image."""

    top: int
    left: int
    height: int
    width: int

    def slices(self, scale: int = 1) -> tuple[slice, slice]:
        """(row, column) slices of this tile in a space ``scale`` times the LR resolution."""
        return (
            slice(self.top * scale, (self.top + self.height) * scale),
            slice(self.left * scale, (self.left + self.width) * scale),
        )


def round_to_multiple(size: int, multiple: int) -> int:
    """``size`` rounded to the nearest positive multiple of ``multiple`` (halves up; at least one ``multiple``)."""
    if multiple < 1:
        raise TilingError(f"size multiple must be >= 1, got {multiple}")
    return max(multiple, (size + multiple // 2) // multiple * multiple)


def ceil_to_multiple(size: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``size``."""
    if multiple < 1:
        raise TilingError(f"size multiple must be >= 1, got {multiple}")
    return -(-size // multiple) * multiple


def reflect_pad(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad ``(B,C,h,w)`` at the bottom/right to ``(B,C,height,width)`` by mirror reflection (any amount).

    ``F.pad(mode="reflect")`` needs the pad to be smaller than the side; larger pads are done in rounds, and a
    side of one pixel is replicated (a 1-pixel image has nothing to reflect).
    """
    h, w = x.shape[-2:]
    if height < h or width < w:
        raise TilingError(f"cannot pad a {h}x{w} image to the smaller size {height}x{width}")
    while True:
        ch, cw = x.shape[-2:]
        ph, pw = height - ch, width - cw
        if ph == 0 and pw == 0:
            return x
        if (ph > 0 and ch == 1) or (pw > 0 and cw == 1):
            x = F.pad(x, (0, pw if cw == 1 else 0, 0, ph if ch == 1 else 0), mode="replicate")
            continue
        x = F.pad(x, (0, min(pw, cw - 1), 0, min(ph, ch - 1)), mode="reflect")


def _axis_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``0..size`` with step ``stride``, last one flush."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles of ``min(tile, side)`` LR pixels covering a ``height x width`` image, neighbours overlapping by at
    least ``overlap`` pixels (the last row/column of tiles is flush with the image edge), in raster order."""
    if tile < 1:
        raise TilingError(f"tile size must be >= 1 LR pixel, got {tile}")
    if not 0 <= overlap < tile:
        raise TilingError(
            f"tile overlap must be in [0, tile={tile}) LR pixels, got {overlap}; lower --tile-overlap"
        )
    th, tw = min(tile, height), min(tile, width)
    stride = tile - overlap
    return [
        Tile(top, left, th, tw)
        for top in _axis_starts(height, th, stride)
        for left in _axis_starts(width, tw, stride)
    ]


def gaussian_weights(
    height: int,
    width: int,
    *,
    sigma_fraction: float = DEFAULT_SIGMA_FRACTION,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Separable Gaussian blending weights ``(1,1,height,width)`` in (0, 1], peak 1 at the tile centre, sigma =
    ``sigma_fraction`` x side (in output pixels)."""
    if sigma_fraction <= 0:
        raise TilingError(f"sigma_fraction must be > 0, got {sigma_fraction}")

    def axis(n: int) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.float64) + 0.5 - n / 2.0
        return torch.exp(-0.5 * (pos / (sigma_fraction * n)) ** 2)

    w = axis(height)[:, None] * axis(width)[None, :]
    return w.to(dtype=dtype, device=device)[None, None]


class TileBlender:
    """Accumulates weighted tile outputs of a ``(B,C,H,W)`` result and returns their normalised blend.

    Accumulators are float32 on ``device`` (CPU by default, so accelerator memory stays bounded by the tile).
    """

    def __init__(
        self,
        batch: int,
        channels: int,
        height: int,
        width: int,
        *,
        sigma_fraction: float = DEFAULT_SIGMA_FRACTION,
        device: torch.device | str = "cpu",
    ) -> None:
        self.sigma_fraction = sigma_fraction
        self.device = torch.device(device)
        self._sum = torch.zeros(batch, channels, height, width, dtype=torch.float32, device=self.device)
        self._weight = torch.zeros(batch, 1, height, width, dtype=torch.float32, device=self.device)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def _weights(self, height: int, width: int) -> torch.Tensor:
        key = (height, width)
        if key not in self._cache:
            self._cache[key] = gaussian_weights(
                height, width, sigma_fraction=self.sigma_fraction, device=self.device
            )[0]
        return self._cache[key]

    def add(self, index: int, rows: slice, cols: slice, values: torch.Tensor) -> None:
        """Add one tile output ``(C,h,w)`` (output space) for image ``index`` at ``[rows, cols]``."""
        values = values.to(device=self.device, dtype=torch.float32)
        w = self._weights(values.shape[-2], values.shape[-1])
        self._sum[index, :, rows, cols] += values * w
        self._weight[index, :, rows, cols] += w

    def result(self) -> torch.Tensor:
        """The blend ``(B,C,H,W)``: weighted mean of all tiles at every pixel (every pixel must be covered)."""
        if bool((self._weight <= 0).any()):
            raise TilingError("internal error: some output pixels are covered by no tile")
        return self._sum / self._weight


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive chunks of at most ``size`` items (``size >= 1``)."""
    if size < 1:
        raise TilingError(f"batch size must be >= 1, got {size}; pass --batch 1 or more")
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def lr_size_multiple(net_multiple: int, lr_to_net: int) -> int:
    """LR-pixel multiple that makes ``lr_to_net`` x the LR side a multiple of ``net_multiple`` (net units)."""
    return net_multiple // math.gcd(net_multiple, lr_to_net)


def stack_crops(x: torch.Tensor, crops: Sequence[tuple[int, Tile]], scale: int = 1) -> torch.Tensor:
    """Stack the crops ``x[index, :, tile rows, tile cols]`` (tile in LR units x ``scale``) into ``(N,C,h,w)``."""
    parts = []
    for index, tile in crops:
        rows, cols = tile.slices(scale)
        parts.append(x[index, :, rows, cols])
    return torch.stack(parts)
