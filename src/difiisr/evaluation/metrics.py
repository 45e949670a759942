"""Full-reference and no-reference image quality metrics, in the conventions DifIISR reports (pyiqa 0.1.12).

Every function takes images as numpy arrays, ``(H,W)`` grey or ``(H,W,3)`` RGB, either integer (``uint8`` scaled
by 255, ``uint16`` by 65535) or float already in [0,1]. Computation is in float64.

Conventions (also written, in words, into every evaluation report via ``METRIC_CONVENTIONS``):

- ``psnr_y``: BT.601 luma ``Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255`` of the [0,1] RGB image (grey is
  R=G=B), *unrounded*, data range 1, no border crop; this is pyiqa ``psnr`` with ``test_y_channel=True,
  color_space='ycbcr'`` as called by the DifIISR evaluation script. pyiqa adds 1e-8 to the MSE (so identical
  images give 80 dB); we do not: identical images give ``inf`` and the value is the exact ``10 log10(1/MSE)``
  (below 40 dB the two differ by less than 0.0005 dB).
- ``ssim_y``: the same Y, times 255 and *rounded* to integers, then SSIM in float64 with an 11x11 Gaussian window
  (sigma 1.5, normalised), 'valid' filtering (no padding, no border pixels), C1 = (0.01*255)^2,
  C2 = (0.03*255)^2, no down-sampling (pyiqa's ``downsample=False`` default), the contrast-structure term clipped
  at 0 (pyiqa's ``relu``), mean over the map. Equals ``skimage.metrics.structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=255)`` on the rounded Y wherever that term is non-negative.
- ``psnr``/``ssim``: the same formulas on the grey or RGB values directly (no Y conversion; SSIM averages the
  channels). For R=G=B images ``psnr_y = psnr + 20 log10(255/219)`` (+1.3228 dB) exactly.
- ``niqe``: basicsr's NIQE (MATLAB-compatible, its shipped pristine-model parameters ``niqe_pris_params.npz``,
  96x96 blocks) on ``Y*255`` (rounded by basicsr), no crop; lower is better; needs at least two 96x96 blocks.
"""

from __future__ import annotations

import logging
import math
from typing import Final

import numpy as np
from scipy.ndimage import correlate1d

from difiisr.errors import DifiisrError

log = logging.getLogger(__name__)

# BT.601 luma weights for RGB in [0,1] -> Y in [16/255, 235/255] (their sum is exactly 219).
_Y_WEIGHTS: Final = np.array([65.481, 128.553, 24.966], dtype=np.float64)
_Y_OFFSET: Final = 16.0

SSIM_WINDOW: Final = 11
SSIM_SIGMA: Final = 1.5
NIQE_BLOCK: Final = 96

METRIC_CONVENTIONS: Final[dict[str, str]] = {
    "psnr_y": "BT.601 Y = (16 + 65.481 R + 128.553 G + 24.966 B)/255 of [0,1] RGB (grey: R=G=B), unrounded, "
    "data range 1, no border crop, no epsilon (identical -> inf); pyiqa psnr(test_y_channel=True, color_space=ycbcr)",
    "ssim_y": "same Y times 255 rounded to integers, float64, Gaussian window 11 sigma 1.5, valid filtering "
    "(no padding), C1=(0.01*255)^2, C2=(0.03*255)^2, no downsampling, contrast term clipped at 0, mean of the map; "
    "pyiqa ssim(test_y_channel=True, color_space=ycbcr)",
    "psnr": "grey or RGB values scaled to [0,1] (uint8 /255, uint16 /65535), data range 1, no crop, no Y conversion",
    "ssim": "grey or RGB values times 255 rounded, same SSIM as ssim_y per channel, channels averaged (pyiqa ssimc)",
    "niqe": "basicsr calculate_niqe with its shipped niqe_pris_params.npz on Y*255 (rounded), crop_border 0, "
    "96x96 blocks; lower is better",
    "lpips": "LPIPS v0.1 AlexNet from user-supplied local weights, inputs RGB in [-1,1] (grey replicated); "
    "lower is better",
}

HIGHER_IS_BETTER: Final[dict[str, bool]] = {
    "psnr_y": True,
    "ssim_y": True,
    "psnr": True,
    "ssim": True,
    "niqe": False,
    "lpips": False,
}


class MetricInputError(DifiisrError, ValueError):
    """Images given to a metric have the wrong shape, dtype or size; the message says which and the fix."""


def to_unit_float(img: np.ndarray) -> np.ndarray:
    """``(H,W)`` or ``(H,W,3)`` uint8/uint16/float -> float64 in [0,1] (uint8 /255, uint16 /65535, float as is)."""
    arr = np.asarray(img)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
        raise MetricInputError(f"expected an (H,W) grey or (H,W,3) RGB image, got shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float64)
    raise MetricInputError(f"unsupported image dtype {arr.dtype}; use uint8, uint16 or float in [0,1]")


def _as_rgb(img: np.ndarray) -> np.ndarray:
    """``(H,W)`` or ``(H,W,3)`` float -> ``(H,W,3)`` (grey replicated to R=G=B)."""
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma: ``(H,W,3)`` RGB or ``(H,W)`` grey (uint or float [0,1]) -> ``(H,W)`` float64 in [16/255, 235/255]."""
    rgb = _as_rgb(to_unit_float(img))
    return (_Y_OFFSET + rgb @ _Y_WEIGHTS) / 255.0


def _pair(sr: np.ndarray, hr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64 [0,1] of the same form (grey paired with RGB is replicated to RGB)."""
    a, b = to_unit_float(sr), to_unit_float(hr)
    if a.shape[:2] != b.shape[:2]:
        raise MetricInputError(
            f"image sizes differ: {a.shape[1]}x{a.shape[0]} (SR) vs {b.shape[1]}x{b.shape[0]} (HR); "
            "the SR must be exactly sf x the LR and the HR the same size"
        )
    if a.ndim != b.ndim:
        a, b = _as_rgb(a), _as_rgb(b)
    return a, b


def _psnr_from_mse(mse: float, data_range: float) -> float:
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range**2 / mse)


def psnr(sr: np.ndarray, hr: np.ndarray, data_range: float | None = None) -> float:
    """PSNR in dB on grey/RGB values: ints scaled to [0,1] and range 1 when ``data_range`` is None, else raw values."""
    if data_range is None:
        a, b = _pair(sr, hr)
        data_range = 1.0
    else:
        a, b = np.asarray(sr, dtype=np.float64), np.asarray(hr, dtype=np.float64)
        if a.shape != b.shape:
            raise MetricInputError(f"image shapes differ: {a.shape} (SR) vs {b.shape} (HR)")
    return _psnr_from_mse(float(np.mean((a - b) ** 2)), float(data_range))


def psnr_y(sr: np.ndarray, hr: np.ndarray) -> float:
    """PSNR in dB on the unrounded BT.601 Y channel, data range 1, no crop (identical images -> inf)."""
    _pair(sr, hr)  # shape check with a clear message
    return _psnr_from_mse(float(np.mean((rgb_to_y(sr) - rgb_to_y(hr)) ** 2)), 1.0)


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps ``(size,)`` float64; the 2-D SSIM window is its outer product (MATLAB fspecial)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 2-D filtering of ``(H,W)`` float64, keeping only the 'valid' region ``(H-k+1, W-k+1)``."""
    r = (taps.size - 1) // 2
    out = correlate1d(correlate1d(img, taps, axis=0, mode="constant"), taps, axis=1, mode="constant")
    return out[r : img.shape[0] - r, r : img.shape[1] - r]


def _ssim_map(x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    """pyiqa SSIM map of two ``(H,W)`` float64 images (values in [0, data_range]); 'valid' size."""
    if min(x.shape) < SSIM_WINDOW:
        raise MetricInputError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {x.shape[1]}x{x.shape[0]}"
        )
    taps = gaussian_window_1d()
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu1, mu2 = _filter_valid(x, taps), _filter_valid(y, taps)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter_valid(x * x, taps) - mu1_sq
    s2 = _filter_valid(y * y, taps) - mu2_sq
    s12 = _filter_valid(x * y, taps) - mu12
    cs = np.maximum((2.0 * s12 + c2) / (s1 + s2 + c2), 0.0)
    return ((2.0 * mu12 + c1) / (mu1_sq + mu2_sq + c1)) * cs


def ssim_y(sr: np.ndarray, hr: np.ndarray) -> float:
    """SSIM in [0,1] on round(Y*255) (BT.601), Gaussian 11/1.5, valid filtering, float64, no downsampling."""
    _pair(sr, hr)
    x = np.round(rgb_to_y(sr) * 255.0)
    y = np.round(rgb_to_y(hr) * 255.0)
    return float(np.mean(_ssim_map(x, y, 255.0)))


def ssim(sr: np.ndarray, hr: np.ndarray) -> float:
    """SSIM in [0,1] on grey/RGB values scaled to 0..255 and rounded, channels averaged (pyiqa ``ssimc``)."""
    a, b = _pair(sr, hr)
    a, b = np.round(a * 255.0), np.round(b * 255.0)
    if a.ndim == 2:
        return float(np.mean(_ssim_map(a, b, 255.0)))
    return float(np.mean([np.mean(_ssim_map(a[..., c], b[..., c], 255.0)) for c in range(a.shape[2])]))


def niqe(img: np.ndarray) -> float:
    """NIQE (lower is better) of ``(H,W)``/``(H,W,3)`` via basicsr on Y*255, crop 0; NaN if < two 96x96 blocks."""
    y255 = rgb_to_y(img) * 255.0
    h, w = y255.shape
    if (h // NIQE_BLOCK) * (w // NIQE_BLOCK) < 2:
        log.warning(
            "NIQE not computed for a %dx%d image: it needs at least two %dx%d blocks (e.g. 192x96)",
            w,
            h,
            NIQE_BLOCK,
            NIQE_BLOCK,
        )
        return math.nan
    from basicsr.metrics.niqe import calculate_niqe  # heavy import (cv2, torch): only when NIQE runs

    return float(calculate_niqe(y255, crop_border=0, input_order="HW"))
