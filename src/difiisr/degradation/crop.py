"""Seeded HR crop and flips applied before degradation (pad small images like the reference, then crop).

A crop is drawn once (``sample_crop``) and can then be applied identically to a numpy image (``(H,W)`` or
``(H,W,C)``, bit-exact, used to write HR files) or to a tensor (``(..., C, H, W)``).

Padding follows the reference Real-ESRGAN dataset: an image with a side shorter than the crop is reflect-101
padded at the bottom/right up to ``crop_pad_size`` on that side (repeatedly, each step at most ``side - 1``
pixels, the most one reflection can add). Flips follow ``basicsr.data.transforms.augment``: horizontal flip,
then (with ``use_rot``) vertical flip and transpose, each with probability 0.5, applied after the crop.
Without a crop size the whole image is kept, cut at the bottom/right to a multiple of ``sf``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

ImageT = TypeVar("ImageT", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class CropParams:
    """Where an HR image is cut (pixel offsets into the padded image) and how it is flipped."""

    top: int
    left: int
    height: int
    width: int
    pad_bottom: int = 0
    pad_right: int = 0
    hflip: bool = False
    vflip: bool = False
    transpose: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record of the crop."""
        return asdict(self)


def sample_crop(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    crop: int | None,
    sf: int = 4,
    crop_pad_size: int = 0,
    use_hflip: bool = False,
    use_rot: bool = False,
) -> CropParams:
    """Draw a ``crop x crop`` window (or, for ``crop=None``, the whole image cut to a multiple of ``sf``)."""
    if height < 1 or width < 1:
        raise ValueError(f"cannot crop an empty image of {height}x{width} pixels")
    pad_bottom = pad_right = 0
    if crop is None:
        out_h, out_w = height - height % sf, width - width % sf
        if out_h == 0 or out_w == 0:
            raise ValueError(f"image of {height}x{width} pixels is smaller than sf={sf}")
        top = left = 0
    else:
        if crop < 1 or crop % sf:
            raise ValueError(
                f"crop={crop} must be a positive multiple of sf={sf} so that LR = crop/sf exactly"
            )
        target = max(crop, crop_pad_size)
        if height < crop:
            pad_bottom = target - height
        if width < crop:
            pad_right = target - width
        out_h = out_w = crop
        top = int(rng.integers(0, height + pad_bottom - crop + 1))
        left = int(rng.integers(0, width + pad_right - crop + 1))
    hflip = bool(use_hflip and rng.random() < 0.5)
    vflip = bool(use_rot and rng.random() < 0.5)
    transpose = bool(use_rot and rng.random() < 0.5)
    return CropParams(top, left, out_h, out_w, pad_bottom, pad_right, hflip, vflip, transpose)


def _reflect_steps(size: int, pad: int) -> list[int]:
    """Pad amounts of successive reflect-101 steps growing a side of ``size`` by ``pad`` in total."""
    steps = []
    while pad > 0:
        if size < 2:
            raise ValueError("cannot reflect-pad a side of 1 pixel; the image is too small to crop")
        step = min(pad, size - 1)
        steps.append(step)
        size += step
        pad -= step
    return steps


def apply_crop(image: ImageT, params: CropParams) -> ImageT:
    """Pad, crop and flip a numpy ``(H,W)``/``(H,W,C)`` image or a ``(..., C, H, W)`` tensor (values kept)."""
    if isinstance(image, torch.Tensor):
        return _apply_tensor(image, params)
    return _apply_numpy(np.asarray(image), params)


def _apply_numpy(img: np.ndarray, p: CropParams) -> np.ndarray:
    h, w = img.shape[:2]
    extra = [(0, 0)] * (img.ndim - 2)
    for step in _reflect_steps(h, p.pad_bottom):
        img = np.pad(img, [(0, step), (0, 0), *extra], mode="reflect")
    for step in _reflect_steps(w, p.pad_right):
        img = np.pad(img, [(0, 0), (0, step), *extra], mode="reflect")
    img = img[p.top : p.top + p.height, p.left : p.left + p.width]
    if p.hflip:
        img = img[:, ::-1]
    if p.vflip:
        img = img[::-1]
    if p.transpose:
        img = np.swapaxes(img, 0, 1)
    return np.ascontiguousarray(img)


def _apply_tensor(img: torch.Tensor, p: CropParams) -> torch.Tensor:
    h, w = img.shape[-2:]
    for step in _reflect_steps(int(h), p.pad_bottom):
        img = _pad_reflect(img, (0, 0, 0, step))
    for step in _reflect_steps(int(w), p.pad_right):
        img = _pad_reflect(img, (0, step, 0, 0))
    img = img[..., p.top : p.top + p.height, p.left : p.left + p.width]
    if p.hflip:
        img = img.flip(-1)
    if p.vflip:
        img = img.flip(-2)
    if p.transpose:
        img = img.transpose(-2, -1)
    return img.contiguous()


def _pad_reflect(img: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
    """Reflect-101 pad of the last two dims of any-rank tensor (F.pad's reflect wants 3-D or 4-D input)."""
    lead = img.shape[:-2]
    flat = img.reshape(-1, 1, *img.shape[-2:])
    out = F.pad(flat, pad, mode="reflect")
    return out.reshape(*lead, *out.shape[-2:])
