"""Gaussian and Poisson noise for one image, drawn from the image's own seeded generators.

The formulas are those of basicsr's ``generate_gaussian_noise_pt`` / ``generate_poisson_noise_pt``; basicsr's
own functions draw from torch's global RNG (and share one grey-noise field across a batch), so the fields are
drawn here, per image, from generators derived from the image seed (``NoiseSource``):

* Gaussian: ``noise = randn * sigma / 255``; grey noise is one ``(H,W)`` field added to all three channels.
* Poisson: the image (grey noise: its luma, torchvision ``rgb_to_grayscale``) is rounded to 8-bit levels,
  ``vals = 2**ceil(log2(#distinct levels))``, ``noise = (poisson(img * vals) / vals - img) * scale``.
  The noise level is defined on the 8-bit grid (as in the reference) also for 16-bit input; the noise is
  added to the unrounded image, so 16-bit precision is kept elsewhere. The distinct levels are counted with a
  histogram (same number as basicsr's ``torch.unique``, without the sort).

Poisson sampling runs on the image's device: ``torch.poisson`` on CUDA; on CPU numpy's sampler (same
distribution, about 4x faster than ``torch.poisson`` there), fed from a numpy generator of the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class NoiseSource:
    """An image's noise generators: ``torch_gen`` (on the image's device) and ``numpy_gen`` (CPU Poisson)."""

    torch_gen: torch.Generator
    numpy_gen: np.random.Generator


def noise_field(img: torch.Tensor, spec: dict[str, Any], source: NoiseSource) -> torch.Tensor:
    """Noise to add to ``img`` ``(1,3,H,W)`` float in [0,1] per a ``noise1``/``noise2`` record; same shape."""
    if spec["kind"] == "gaussian":
        return gaussian_noise(img, float(spec["sigma"]), bool(spec["gray"]), source.torch_gen)
    if spec["kind"] == "poisson":
        return poisson_noise(img, float(spec["scale"]), bool(spec["gray"]), source)
    raise ValueError(f"noise record has unknown kind {spec['kind']!r}; expected 'gaussian' or 'poisson'")


def gaussian_noise(img: torch.Tensor, sigma: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """Zero-mean Gaussian noise, std ``sigma/255``, for ``img`` ``(1,3,H,W)``; grey: equal in R, G, B."""
    b, c, h, w = img.shape
    shape = (b, 1, h, w) if gray else (b, c, h, w)
    noise = torch.randn(shape, generator=generator, device=img.device, dtype=img.dtype) * (sigma / 255.0)
    return noise.expand(b, c, h, w) if gray else noise


def poisson_noise(img: torch.Tensor, scale: float, gray: bool, source: NoiseSource) -> torch.Tensor:
    """Shot noise (basicsr's formula) x ``scale`` for ``img`` ``(1,3,H,W)`` in [0,1]; grey: equal in RGB."""
    b, c, h, w = img.shape
    if gray:
        from torchvision.transforms.functional import rgb_to_grayscale  # heavy import, only when needed

        base = rgb_to_grayscale(img, num_output_channels=1)
    else:
        base = img
    levels = torch.clamp((base * 255.0).round(), 0, 255)
    distinct = int(torch.bincount(levels.flatten().to(torch.int64), minlength=256).count_nonzero())
    vals = float(2 ** math.ceil(math.log2(max(1, distinct))))
    base = levels / 255.0
    lam = base * vals
    if img.device.type == "cpu":
        counts = torch.from_numpy(source.numpy_gen.poisson(lam.numpy().astype(np.float64)).astype(np.float32))
    else:
        counts = torch.poisson(lam, generator=source.torch_gen)
    noise = (counts / vals - base) * scale
    return noise.expand(b, c, h, w) if gray else noise
