"""Gaussian and Poisson noise for a batch, each image's field drawn from that image's own seeded generators.

The formulas are those of basicsr's ``generate_gaussian_noise_pt`` / ``generate_poisson_noise_pt``; basicsr's
own functions draw from torch's global RNG (and share one grey-noise field across a batch), so the fields are
drawn here, per image, from generators derived from the image seed (``NoiseSource``):

* Gaussian: ``noise = randn * sigma / 255``; grey noise is one ``(H,W)`` field added to all three channels.
* Poisson: the image (grey noise: its luma, torchvision ``rgb_to_grayscale``) is rounded to 8-bit levels,
  ``vals = 2**ceil(log2(#distinct levels))``, ``noise = (poisson(img * vals) / vals - img) * scale``.
  The noise level is defined on the 8-bit grid (as in the reference) also for 16-bit input; the noise is
  added to the unrounded image, so 16-bit precision is kept elsewhere. The distinct levels are counted with a
  histogram (same number as basicsr's ``torch.unique``, without the sort).

Batching. Only the random draws are per image (each from its own generator, so an image's field never depends
on the rest of the batch); the arithmetic around them (luma, rounding, level counts, scaling, the final add
and clamp) runs once over the whole batch. The per-image draws are independent, so with ``workers > 1`` they
run on that many threads (numpy's and torch's samplers release the GIL); the result is the same for any number
of workers.

Poisson sampling runs on the image's device: ``torch.poisson`` on CUDA; on CPU numpy's sampler (same
distribution; measured as fast as ``torch.poisson`` here), fed from a numpy generator of the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class NoiseSource:
    """An image's noise generators: ``torch_gen`` (on the image's device) and ``numpy_gen`` (CPU Poisson)."""

    torch_gen: torch.Generator
    numpy_gen: np.random.Generator


def add_noise(
    x: torch.Tensor, specs: Sequence[dict[str, Any]], sources: Sequence[NoiseSource], *, workers: int = 1
) -> torch.Tensor:
    """``x`` (B,3,H,W) float in [0,1] plus image i's noise per ``specs[i]`` (noise1/noise2 record), in [0,1].

    Returns a new tensor; ``sources[i]`` are image i's generators; ``workers`` threads draw the fields.
    """
    b = x.shape[0]
    if not len(specs) == len(sources) == b:
        raise ValueError(f"add_noise: {len(specs)} specs and {len(sources)} sources for {b} images")
    for spec in specs:
        if spec["kind"] not in ("gaussian", "poisson"):
            raise ValueError(
                f"noise record has unknown kind {spec['kind']!r}; expected 'gaussian' or 'poisson'"
            )
    noise = torch.empty_like(x)
    tasks: list[Callable[[], None]] = []
    gauss = [i for i, s in enumerate(specs) if s["kind"] == "gaussian"]
    for i in gauss:
        tasks.append(_gaussian_task(noise[i], float(specs[i]["sigma"]), bool(specs[i]["gray"]), sources[i]))
    finish: list[Callable[[], None]] = []
    for gray in (True, False):
        idx = [i for i, s in enumerate(specs) if s["kind"] == "poisson" and bool(s["gray"]) is gray]
        if idx:
            finish.append(_poisson_batch(x, noise, idx, [specs[i] for i in idx], sources, gray, tasks))
    _run(tasks, workers)
    for step in finish:
        step()
    return noise.add_(x).clamp_(0.0, 1.0)


def _run(tasks: Sequence[Callable[[], None]], workers: int) -> None:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        for future in [pool.submit(task) for task in tasks]:
            future.result()


def _gaussian_task(out: torch.Tensor, sigma: float, gray: bool, source: NoiseSource) -> Callable[[], None]:
    """Fill ``out`` (3,H,W) with ``randn * sigma/255`` (grey: one (1,H,W) field copied to all channels)."""

    def task() -> None:
        field = out[:1] if gray else out
        torch.randn(field.shape, generator=source.torch_gen, out=field)
        field.mul_(sigma / 255.0)
        if gray:
            out[1:].copy_(field.expand(out.shape[0] - 1, -1, -1))

    return task


def _poisson_batch(
    x: torch.Tensor,
    noise: torch.Tensor,
    idx: list[int],
    specs: list[dict[str, Any]],
    sources: Sequence[NoiseSource],
    gray: bool,
    tasks: list[Callable[[], None]],
) -> Callable[[], None]:
    """Queue the per-image Poisson draws of images ``idx`` (all grey or all colour) on ``tasks``.

    Returns the step that, once the draws are done, writes their noise into ``noise[idx]``.
    """
    sub = x[idx]
    if gray:
        from torchvision.transforms.functional import rgb_to_grayscale  # heavy import, only when needed

        sub = rgb_to_grayscale(sub, num_output_channels=1)
    n, c, h, w = sub.shape
    levels = torch.clamp((sub * 255.0).round(), 0, 255)
    offsets = torch.arange(n, device=x.device).view(n, 1, 1, 1) * 256
    hist = torch.bincount((levels.to(torch.int64) + offsets).flatten(), minlength=256 * n)
    distinct = hist.view(n, 256).count_nonzero(dim=1).tolist()
    vals = [float(2 ** math.ceil(math.log2(max(1, int(d))))) for d in distinct]
    base = levels / 255.0
    vals_t = torch.tensor(vals, dtype=x.dtype, device=x.device).view(n, 1, 1, 1)
    lam = base * vals_t
    counts = torch.empty_like(lam)
    for k, i in enumerate(idx):
        tasks.append(_poisson_task(lam[k], counts[k], sources[i]))

    def finish() -> None:
        scale = torch.tensor([float(s["scale"]) for s in specs], dtype=x.dtype, device=x.device)
        field = (counts / vals_t - base) * scale.view(n, 1, 1, 1)
        noise[idx] = field.expand(n, x.shape[1], h, w) if gray else field

    return finish


def _poisson_task(lam: torch.Tensor, out: torch.Tensor, source: NoiseSource) -> Callable[[], None]:
    """Fill ``out`` with Poisson(``lam``) counts drawn from ``source`` (numpy on CPU, torch elsewhere)."""

    def task() -> None:
        if lam.device.type == "cpu":
            drawn = source.numpy_gen.poisson(lam.numpy().astype(np.float64))
            out.copy_(torch.from_numpy(drawn))
        else:
            out.copy_(torch.poisson(lam, generator=source.torch_gen))

    return task
