"""Convert between image arrays (uint8/uint16, grey or RGB) and the model's ``(B,3,H,W)`` float tensors in [-1,1].

uint8 is scaled by 255 and uint16 by 65535, so ``tensor_to_image(image_to_tensor(x), bit_depth=...)`` gives
``x`` back exactly for both depths (grey comes back with ``channels=1``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported when a conversion runs, so reading images alone stays light
    import torch

_MAX_VALUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _one_to_chw(pixels: np.ndarray, index: int) -> torch.Tensor:
    """One ``(H,W)``/``(H,W,1)``/``(H,W,3)`` uint8/uint16 array -> ``(3,H,W)`` float32 in [-1,1]."""
    import torch

    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"image {index}: expected a numpy array, got {type(pixels).__name__}")
    scale = _MAX_VALUE.get(pixels.dtype)
    if scale is None:
        raise ValueError(f"image {index}: pixels must be uint8 or uint16, got {pixels.dtype}")
    arr = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[2] == 3:
        arr = arr.transpose(2, 0, 1)
    else:
        raise ValueError(f"image {index}: pixels must be (H,W) grey or (H,W,3) RGB, got shape {pixels.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32))
    t = t.mul_(2.0 / scale).sub_(1.0)
    return t.expand(3, -1, -1) if t.shape[0] == 1 else t


def image_to_tensor(pixels: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """``(H,W)`` / ``(H,W,3)`` uint8|uint16 (one array or a list of same-size arrays) -> ``(B,3,H,W)`` float32 in [-1,1].

    Grey is replicated to R = G = B; uint8 is divided by 255, uint16 by 65535 (each array by its own dtype).
    """
    import torch

    items = [pixels] if isinstance(pixels, np.ndarray) else list(pixels)
    if not items:
        raise ValueError("image_to_tensor: got an empty list of images")
    chw = [_one_to_chw(p, i) for i, p in enumerate(items)]
    shapes = {tuple(t.shape[1:]) for t in chw}
    if len(shapes) > 1:
        raise ValueError(f"image_to_tensor: images in one batch must share (H,W), got {sorted(shapes)}")
    return torch.stack(chw).contiguous()


def tensor_to_image(t: torch.Tensor, *, bit_depth: int = 8, channels: int = 3) -> np.ndarray:
    """``(3,H,W)`` or ``(1,3,H,W)`` float in [-1,1] -> ``(H,W)`` (channels=1: mean of RGB) or ``(H,W,3)``.

    Values are clamped to [-1,1], scaled to 0..255 (bit_depth 8, uint8) or 0..65535 (16, uint16) and rounded.
    """
    import torch

    if bit_depth not in (8, 16):
        raise ValueError(f"tensor_to_image: bit_depth must be 8 or 16, got {bit_depth}")
    if channels not in (1, 3):
        raise ValueError(f"tensor_to_image: channels must be 1 (grey) or 3 (RGB), got {channels}")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"tensor_to_image: expected a torch.Tensor, got {type(t).__name__}")
    x = t.detach()
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(
                f"tensor_to_image: converts one image; got a batch of {x.shape[0]}, index it first"
            )
        x = x[0]
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"tensor_to_image: expected (3,H,W) or (1,3,H,W), got shape {tuple(t.shape)}")
    x = x.to(device="cpu", dtype=torch.float64)
    if channels == 1:
        x = x.mean(dim=0, keepdim=True)
    elif x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    if torch.isnan(x).any():
        raise ValueError("tensor_to_image: the tensor holds NaN values; the model output is broken upstream")
    x = x.clamp_(-1.0, 1.0)
    scale = 255.0 if bit_depth == 8 else 65535.0
    arr = torch.round((x + 1.0) * (scale / 2.0)).numpy()
    out = arr.astype(np.uint8 if bit_depth == 8 else np.uint16)
    return out[0] if channels == 1 else np.ascontiguousarray(out.transpose(1, 2, 0))
