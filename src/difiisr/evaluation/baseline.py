"""The bicubic baseline every model is compared with: PIL bicubic up-sampling of the LR."""

from __future__ import annotations

import numpy as np
from PIL import Image


def bicubic_upscale(lr: np.ndarray, sf: int = 4) -> np.ndarray:
    """PIL BICUBIC x``sf`` of ``(h,w)``/``(h,w,3)`` uint8 or uint16 -> ``(sf*h, sf*w[,3])`` of the same dtype.

    uint8 goes through PIL's 8-bit path (``L``/``RGB``, the usual SR baseline); uint16 through PIL's float
    path (``F``) per channel, then rounded and clipped to 0..65535.
    """
    arr = np.asarray(lr)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"bicubic_upscale: expected (h,w) grey or (h,w,3) RGB, got shape {arr.shape}")
    size = (arr.shape[1] * sf, arr.shape[0] * sf)
    if arr.dtype == np.uint8:
        return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BICUBIC))
    if arr.dtype != np.uint16:
        raise ValueError(f"bicubic_upscale: expected uint8 or uint16 pixels, got {arr.dtype}")
    planes = arr[..., None] if arr.ndim == 2 else arr
    out = [
        np.asarray(Image.fromarray(planes[..., c].astype(np.float32)).resize(size, Image.Resampling.BICUBIC))
        for c in range(planes.shape[2])
    ]
    up = np.clip(np.rint(np.stack(out, axis=2)), 0, 65535).astype(np.uint16)
    return up[..., 0] if arr.ndim == 2 else up
