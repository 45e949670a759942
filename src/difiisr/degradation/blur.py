"""Blur a batch with one kernel per image: basicsr ``filter2D`` arithmetic, one grouped conv per kernel size.

basicsr's ``filter2D(img, kernel)`` reflect-pads by ``k//2`` and runs a depthwise conv (``groups=B*C``) with
each image's kernel repeated over its channels; every kernel of a call must have the same size, so the
reference zero-pads all kernels to 21x21. Here the images are grouped by their kernel's *actual* size and
each group gets one depthwise conv at that size: the same arithmetic per image (a kernel's zero taps add
nothing), but a 5x5 blur costs 5x5 taps rather than 21x21. A depthwise conv over many channels also
vectorises far better on CPU than one over three (the single-kernel branch of ``filter2D`` is a plain conv,
about 2x slower still).

The result of an image depends only on the image and its kernel, not on the rest of the batch (the grouped
conv computes each channel independently; ``tests/degradation/test_blur.py`` checks it is bit-identical to
basicsr ``filter2D`` on the image alone).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

KernelLike = torch.Tensor | np.ndarray

# CPU layout choice (measured on AMD EPYC, torch 2.14 oneDNN): channels-last when the conv has fewer channels
# than one 8-lane block and the kernel is at most 13 wide; planar (the basicsr layout) otherwise
_BLOCKED_CHANNELS = 8
_CHANNELS_LAST_MAX_K = 13


def group_by_size(kernels: Sequence[KernelLike | None]) -> dict[int, list[int]]:
    """{kernel side k: indices of the images with a (k,k) kernel}, ascending k; None entries are left out."""
    groups: dict[int, list[int]] = {}
    for i, kernel in enumerate(kernels):
        if kernel is None:
            continue
        if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
            raise ValueError(
                f"blur kernel {i} must be square with an odd side, got shape {tuple(kernel.shape)}"
            )
        groups.setdefault(int(kernel.shape[0]), []).append(i)
    return dict(sorted(groups.items()))


def depthwise_filter(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) float, kernels (B,k,k), k odd, k//2 < H,W -> (B,C,H,W): image i by kernel i, reflect pad."""
    b, c, h, w = x.shape
    k = int(kernels.shape[-1])
    p = k // 2
    # a strided input (e.g. DiffJPEG's cropped, channels-last-ordered output) makes the pad and conv several
    # times slower; basicsr's filter2D needs a contiguous input too
    padded = F.pad(x.contiguous(), (p, p, p, p), mode="reflect").reshape(1, b * c, h + 2 * p, w + 2 * p)
    weight = kernels.to(device=x.device, dtype=x.dtype).reshape(b, 1, 1, k, k).expand(b, c, 1, k, k)
    if x.device.type == "cpu" and b * c < _BLOCKED_CHANNELS and k <= _CHANNELS_LAST_MAX_K:
        # oneDNN's planar depthwise conv blocks channels by 8; 3 channels waste 5/8 of each vector, so small
        # kernels on few channels run 2-6x faster channels-last (same sums per output pixel, same result)
        padded = padded.contiguous(memory_format=torch.channels_last)
    out = F.conv2d(padded, weight.reshape(b * c, 1, k, k), groups=b * c)
    return out.reshape(b, c, h, w).contiguous()


def filter_per_image(x: torch.Tensor, kernels: Sequence[KernelLike | None]) -> torch.Tensor:
    """(B,C,H,W) float -> (B,C,H,W): image i blurred by its own odd (k_i,k_i) kernel (None: unchanged).

    One ``depthwise_filter`` call per distinct kernel size; returns ``x`` itself when every kernel is None.
    """
    if len(kernels) != x.shape[0]:
        raise ValueError(f"filter_per_image: got {len(kernels)} kernels for a batch of {x.shape[0]} images")
    groups = group_by_size(kernels)
    if not groups:
        return x
    stacks = {
        k: torch.stack([torch.as_tensor(kernels[i], dtype=torch.float32) for i in idx])
        for k, idx in groups.items()
    }
    if len(groups) == 1:
        ((k, idx),) = groups.items()
        if len(idx) == x.shape[0]:
            return depthwise_filter(x, stacks[k])
    out = torch.empty_like(x)
    untouched = [i for i, kernel in enumerate(kernels) if kernel is None]
    if untouched:
        out[untouched] = x[untouched]
    for k, idx in groups.items():
        out[idx] = depthwise_filter(x[idx], stacks[k])
    return out
