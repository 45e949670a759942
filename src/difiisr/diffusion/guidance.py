"""Gradient guidance (method.md section 5): the loss terms, the step-size schedule and the sampler hook.

Pure math on tensors: no networks are built and nothing is read or written here. The decoder D is passed in as a
callable (``Conditioner.decode_differentiable``; the identity in pixel space).

Sampling-time guidance
----------------------
At each guided step t one gradient step on ``L(x) = C(D(x); y) + mu * S(D(x); y)`` corrects the chain before its
update, in one of two spaces:

* ``xt`` (the paper's form, ``lr_consistency_guidance``, hook ``samplers.Guidance``): the state,
  ``z_t <- z_t - lambda_t * grad_{z_t} L(x0_hat(z_t))``, with the gradient through the denoiser and the decoder.
  The update then uses the corrected z_t with the same x0_hat. Its effect on the output goes through the
  denoiser's Jacobian d x0_hat / d z_t (the last update returns x0_hat itself): a model that predicts the
  residual from its LR condition, whose x0_hat hardly depends on z_t, barely moves.
* ``x0`` (``lr_consistency_x0_guidance``, hook ``samplers.X0Guidance``): the estimate,
  ``x0_hat <- x0_hat - lambda_t * grad_{x0_hat} L(x0_hat)``, with the gradient through the decoder only, and
  the update uses the corrected x0_hat (as in manifold-preserving guided diffusion). At t = 0 the corrected
  estimate is the output. Scale in pixel space: A's weights per LR pixel sum to 1 and each HR pixel carries
  1/sf^2 of them in total, so for a uniform LR residual r the gradient is 2 r / sf^2 per HR pixel.
  lambda = sf^2 / 2 (8 at x4) removes that residual in one step, lambda = sf^2 is the edge of stability, and
  finer residuals shrink more slowly. The LR-consistency PSNR of the benchmark peaks at 8.

summed over the images of a batch (every image's gradient depends on its own loss only). With ``sr = D(x0_hat)``
``(B,3,sf*h,sf*w)`` and the LR observation ``y`` ``(B,3,h,w)``, both in [-1,1]:

* ``C`` (``lr_consistency``), the data term: ``sum over (c,i,j) of (A(sr) - y)^2`` per image, with A the bicubic
  x1/sf test protocol (``bicubic_downsample_tensor``: Pillow's antialiased bicubic, a = -0.5). A sum, not a mean,
  so a pixel's gradient does not depend on the image size and one lambda serves every size.
* ``S`` (``spectral_prior``), the thermal-spectrum prior. At inference there is no HR, so the target spectrum is
  extrapolated from the observation: natural (and thermal) images have a power spectrum close to a power law,
  P(f) ~ c f^-alpha. Let ``P_x(b)`` be the mean of ``|FFT(grey(x) - mean)|^2 / (H W)`` (the periodogram, in
  [-1,1]^2 units per cycle^2) over the frequencies of the ring b (radii in cycles per pixel), grey = channel
  mean. Fit ``log P_y(b) = a - alpha log f_b`` by least squares over ``FIT_BINS`` log-spaced rings of the LR
  between ``2 / min(h, w)`` and ``FIT_HIGH`` cycles per LR pixel (below the antialiasing filter's roll-off;
  f_b = the ring's geometric centre). Sampling at sf times the rate maps the LR spectrum to the SR scale as
  ``P_sr(f) = sf^2 P_lr(sf f)``, so the target of an SR ring is ``T(b) = 2 log sf + a - alpha log(sf f_b)``.
  The prior is ``S(sr) = h w * mean over rings b of (log P_sr(b) - T(b))^2`` over ``PRIOR_BINS`` log-spaced
  rings of the band the LR cannot see, ``0.5/sf .. 0.5`` cycles per SR pixel. The factor h w (LR pixels) makes
  its gradient per pixel scale with image size like C's, so mu is size-independent. It needs an LR of at
  least ``MIN_PRIOR_SIDE`` pixels a side (``SpectralPriorError`` otherwise).

``lambda_t`` comes from ``step_sizes``: ``scale`` times the schedule's factor at the ``steps`` least-noisy steps
that can move the sample: t = steps..1 in ``xt`` (both updates ignore z_0: DDIM's m_0 and the posterior's
eta_{-1}/eta_0 are 0), t = steps-1..0 in ``x0``. A gradient through the VQGAN decoder uses a straight-through
quantiser (the nearest-code lookup has no gradient).

Training-time losses
--------------------
``log_amplitude_distance`` is the visual / thermal-spectrum term of DifIISR: the mean over images, channels and
frequencies of ``w(f) |log(1 + |F(x)|) - log(1 + |F(ref)|)|`` with the orthonormal 2-D FFT and an optional
radial weighting ``w(f) = (f / f_max)^gamma`` normalised to mean 1 (``gamma = 0``: uniform). With a ``band`` it is
also the high-frequency spectrum error reported by ``benchmarks/guidance.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor

from difiisr.degradation.bicubic import bicubic_downsample_tensor
from difiisr.diffusion.samplers import Guidance, X0Guidance
from difiisr.errors import DifiisrError

GuidanceSchedule = Literal["constant", "linear", "eta"]
GuidanceSpace = Literal["xt", "x0"]
#: Where the gradient step is taken: ``xt`` corrects the state z_t through the denoiser's Jacobian (the paper's
#: form); ``x0`` corrects the estimate x0_hat before the update (no gradient through the denoiser; see
#: ``lr_consistency_x0_guidance``).
SPACES: tuple[str, ...] = get_args(GuidanceSpace)
#: lambda_t schedules: constant; linear (ramps up as the noise falls: (T - t) / (T - 1), 1 at t = 1);
#: eta (follows the noise level: eta_t / eta_1, so the noisiest steps move most).
SCHEDULES: tuple[str, ...] = get_args(GuidanceSchedule)

#: Spectral prior: rings of the LR used for the power-law fit, and its highest frequency (cycles per LR pixel).
FIT_BINS = 6
FIT_HIGH = 0.25
#: Rings of the SR band above the LR Nyquist frequency that the prior compares.
PRIOR_BINS = 6
#: Smallest LR side (pixels) for which the fit band 2/side .. FIT_HIGH holds at least two rings.
MIN_PRIOR_SIDE = 16
_EPS_POWER = 1e-12  # keeps log() and sqrt() finite for an exactly flat spectrum

#: A differentiable decoder: diffusion space ``(B,C,H,W)`` -> pixels ``(B,3,H*f,W*f)`` (identity in pixel space).
Decoder = Callable[[Tensor], Tensor]


class SpectralPriorError(DifiisrError, ValueError):
    """The spectral prior cannot be formed for this input (too small); the message names the fix."""


# ---------------------------------------------------------------------------------------------- spectra


def frequency_radius(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """``(height, width)`` float64 radial frequency of each 2-D FFT bin, in cycles per pixel (0 .. sqrt(0.5))."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64, device=device)
    fx = torch.fft.fftfreq(width, dtype=torch.float64, device=device)
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def log_amplitude(x: Tensor) -> Tensor:
    """``log(1 + |F(x)|)`` per channel, orthonormal 2-D FFT over (H,W); ``(B,C,H,W)`` in, same shape out.

    The amplitude is ``sqrt(|F|^2 + 1e-12)``, so the gradient stays finite where a coefficient is exactly 0.
    """
    spectrum = torch.fft.fft2(x.to(torch.promote_types(x.dtype, torch.float32)), norm="ortho")
    return torch.log1p(torch.sqrt(spectrum.real**2 + spectrum.imag**2 + _EPS_POWER))


def log_amplitude_distance(
    x: Tensor,
    ref: Tensor,
    *,
    radial_power: float = 0.0,
    band: tuple[float, float] | None = None,
) -> Tensor:
    """0-dim mean of ``w(f) |log(1+|F x|) - log(1+|F ref|)|`` over images, channels and frequencies.

    ``x``, ``ref``: ``(B,C,H,W)`` (any range; [-1,1] images here). ``radial_power`` gamma >= 0 weights frequency
    f (cycles per pixel) by ``(f / f_max)^gamma``, normalised to mean 1 over the frequencies used. ``band``
    ``(low, high)`` keeps only frequencies with ``low < f <= high``.
    """
    if x.shape != ref.shape:
        raise ValueError(f"spectrum distance: shapes differ, {tuple(x.shape)} vs {tuple(ref.shape)}")
    if radial_power < 0:
        raise ValueError(f"radial_power={radial_power}: must be >= 0 (0 weights all frequencies equally)")
    diff = (log_amplitude(x) - log_amplitude(ref.detach())).abs()
    radius = frequency_radius(x.shape[-2], x.shape[-1], x.device)
    keep = torch.ones_like(radius, dtype=torch.bool)
    if band is not None:
        keep = (radius > band[0]) & (radius <= band[1])
        if not bool(keep.any()):
            raise ValueError(
                f"spectrum distance: no frequency of a {x.shape[-2]}x{x.shape[-1]} image in {band}"
            )
    weight = keep.to(torch.float64)
    if radial_power:
        weight = weight * (radius / radius.max()) ** radial_power
    weight = (weight / weight.sum()).to(diff.dtype)
    return (diff * weight).sum(dim=(-2, -1)).mean()


def _ring_matrix(radius: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
    """``(n_used, H*W)`` rows averaging the bins of each non-empty ring ``edges[k] < r <= edges[k+1]``, and the
    ``(n_used,)`` indices of those rings."""
    flat = radius.reshape(-1)
    members = (flat[None, :] > edges[:-1, None]) & (flat[None, :] <= edges[1:, None])
    counts = members.sum(dim=1)
    used = torch.nonzero(counts > 0).reshape(-1)
    rows = members[used].to(torch.float64)
    return rows / counts[used, None], used


def ring_log_power(x: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
    """Log mean periodogram per frequency ring of the grey image: ``(B, n_used)`` float64 and the ``(n_used,)``
    indices of the rings of ``edges`` (``(n+1,)`` radii in cycles per pixel) that hold at least one FFT bin.

    grey = channel mean minus its spatial mean; periodogram ``|FFT(grey)|^2 / (H W)``.
    """
    grey = x.to(torch.float64).mean(dim=1)
    grey = grey - grey.mean(dim=(-2, -1), keepdim=True)
    h, w = grey.shape[-2:]
    spectrum = torch.fft.fft2(grey)
    power = (spectrum.real**2 + spectrum.imag**2).reshape(grey.shape[0], -1) / (h * w)
    rows, used = _ring_matrix(frequency_radius(h, w, x.device), edges.to(x.device))
    return torch.log(power @ rows.T + _EPS_POWER), used


def _log_edges(low: float, high: float, bins: int, device: torch.device | str) -> Tensor:
    return torch.logspace(math.log10(low), math.log10(high), bins + 1, dtype=torch.float64, device=device)


def _centres(edges: Tensor) -> Tensor:
    return torch.sqrt(edges[:-1] * edges[1:])


def power_law_fit(y: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares fit ``log P_y(f) = a - alpha log f`` of the LR's ring spectrum; ``(a, alpha)``, each ``(B,)``.

    ``y``: ``(B,C,h,w)`` LR (no gradient is taken); rings as in the module docstring.
    """
    h, w = y.shape[-2:]
    if min(h, w) < MIN_PRIOR_SIDE:
        raise SpectralPriorError(
            f"the spectral prior needs an LR of at least {MIN_PRIOR_SIDE}x{MIN_PRIOR_SIDE} pixels to fit its "
            f"spectrum, got {h}x{w}; raise the tile size, or set the spectral weight (mu) to 0"
        )
    edges = _log_edges(2.0 / min(h, w), FIT_HIGH, FIT_BINS, y.device)
    log_power, used = ring_log_power(y.detach(), edges)
    if used.numel() < 2:  # cannot happen for sides >= MIN_PRIOR_SIDE; kept as a guard
        raise SpectralPriorError(f"an LR of {h}x{w} pixels has fewer than two frequency rings to fit")
    log_f = torch.log(_centres(edges)[used])
    f_mean, p_mean = log_f.mean(), log_power.mean(dim=1, keepdim=True)
    slope = ((log_f - f_mean) * (log_power - p_mean)).sum(dim=1) / ((log_f - f_mean) ** 2).sum()
    return p_mean[:, 0] - slope * f_mean, -slope


def spectral_target(y: Tensor, sf: int) -> tuple[Tensor, Tensor]:
    """Target log power of the SR rings from the LR ``y`` ``(B,C,h,w)``: ``(B, n_used)`` and the SR ring edges.

    ``T(b) = 2 log sf + a - alpha log(sf f_b)`` over ``PRIOR_BINS`` log-spaced rings from ``0.5/sf`` to 0.5
    cycles per SR pixel (the returned edges hold only the rings an SR of ``sf`` times the size has bins in).
    """
    a, alpha = power_law_fit(y)
    h, w = y.shape[-2:]
    edges = _log_edges(0.5 / sf, 0.5, PRIOR_BINS, y.device)
    _, used = _ring_matrix(frequency_radius(sf * h, sf * w, y.device), edges)
    centres = _centres(edges)[used]
    target = 2 * math.log(sf) + a[:, None] - alpha[:, None] * torch.log(sf * centres)[None, :]
    return target, edges


def spectral_prior(sr: Tensor, target: Tensor, edges: Tensor, lr_pixels: int) -> Tensor:
    """``S`` per image, ``(B,)``: ``lr_pixels * mean_b (log P_sr(b) - T(b))^2`` for the target of
    ``spectral_target`` (``sr``: ``(B,C,H,W)``, differentiable)."""
    log_power, _ = ring_log_power(sr, edges)
    if log_power.shape != target.shape:
        raise ValueError(
            f"spectral prior: the SR has {log_power.shape[1]} rings, the target {target.shape[1]}; form the "
            "target from the LR of this SR (spectral_target(y, sf))"
        )
    return lr_pixels * (log_power - target).pow(2).mean(dim=1)


# ---------------------------------------------------------------------------------------------- data term


def lr_consistency(sr: Tensor, y: Tensor, sf: int) -> Tensor:
    """``C`` per image, ``(B,)``: ``sum over (c,i,j) of (A(sr) - y)^2``; ``sr`` ``(B,C,sf*h,sf*w)``, ``y`` ``(B,C,h,w)``."""
    down = bicubic_downsample_tensor(sr, sf)
    if down.shape != y.shape:
        raise ValueError(
            f"lr_consistency: A(sr) has shape {tuple(down.shape)} but y has {tuple(y.shape)}; sr must be sf={sf} "
            "times the LR size"
        )
    return (down - y.to(down.dtype)).pow(2).sum(dim=(1, 2, 3))


# ---------------------------------------------------------------------------------------------- schedule


def step_sizes(
    schedule: GuidanceSchedule,
    scale: float,
    etas: Tensor,
    steps: int | None = None,
    *,
    space: GuidanceSpace = "xt",
) -> Tensor:
    """lambda_t for t = 0..T-1, ``(T,)`` float64: ``scale`` times the schedule's factor at the guided steps, else 0.

    ``etas``: the process's ``(T,)`` eta_t. The guided steps are the ``steps`` least-noisy steps that can move the
    sample (None: all of them): t = steps..1 in ``space`` ``xt`` (z_0 is ignored by the last update), t =
    steps-1..0 in ``x0`` (the corrected x0_hat at t = 0 is the output). Factors: constant 1; linear
    (T - t) / (T - 1); eta eta_t / eta_1 (eta_t / eta_0 in x0).
    """
    total = int(etas.shape[0])
    if schedule not in SCHEDULES:
        raise ValueError(f"guidance schedule {schedule!r} is unknown; use one of {', '.join(SCHEDULES)}")
    if space not in SPACES:
        raise ValueError(f"guidance space {space!r} is unknown; use one of {', '.join(SPACES)}")
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"guidance scale {scale!r}: must be a finite number >= 0")
    first = 0 if space == "x0" else 1
    guidable = total - first
    guided = guidable if steps is None else int(steps)
    if not 0 <= guided <= guidable:
        raise ValueError(
            f"guidance steps={steps}: a {total}-step process can guide 1..{guidable} steps in space {space} "
            f"(t = {total - 1}..{first}); lower it or leave it unset"
        )
    t = torch.arange(total, dtype=torch.float64)
    if schedule == "constant":
        factor = torch.ones(total, dtype=torch.float64)
    elif schedule == "linear":
        factor = (total - t) / max(total - 1, 1)
    else:
        e = etas.to(torch.float64)
        factor = e / e[first] if total > first else torch.ones_like(e)
    mask = (t >= first) & (t < first + guided)
    return torch.where(mask, scale * factor, torch.zeros_like(factor))


# ---------------------------------------------------------------------------------------------- the hook


def guidance_loss(
    sr: Tensor, y: Tensor, sf: int, mu: float = 0.0, target: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """``L = sum over images of C(sr; y) + mu * S(sr; y)``, 0-dim (``target``: ``spectral_target(y, sf)``)."""
    loss = lr_consistency(sr, y, sf).sum()
    if mu:
        if target is None:
            target = spectral_target(y, sf)
        lr_pixels = y.shape[-2] * y.shape[-1]
        loss = loss + mu * spectral_prior(sr, *target, lr_pixels).sum()
    return loss


def _step_size(sizes: list[float], t: Tensor) -> float:
    """lambda of the batch's step ``t`` ``(B,)`` (one index for the whole batch, as the samplers pass it)."""
    index = int(t[0])
    if bool((t != index).any()):
        raise ValueError(f"guidance: one step index per batch expected, got {t.tolist()}")
    return sizes[index]


def lr_consistency_guidance(
    y: Tensor,
    decode: Decoder,
    lambdas: Tensor,
    *,
    sf: int,
    mu: float = 0.0,
) -> Guidance:
    """The sampler hook for ``L = C + mu S`` (module docstring) with per-step sizes ``lambdas`` ``(T,)``.

    ``y``: ``(B,3,h,w)`` LR in [-1,1] (the batch the sampler runs on); ``decode``: differentiable D. A step whose
    lambda is 0 returns z_t unchanged without computing anything. The loss is computed in float32 (at least)
    with autocast off; the decoder runs under the caller's autocast.
    """
    y = y.detach()
    target = spectral_target(y, sf) if mu else None
    sizes = [float(v) for v in lambdas]

    def hook(z_t: Tensor, t: Tensor, x0_hat: Tensor) -> Tensor:
        step = _step_size(sizes, t)
        if step == 0.0:
            return z_t
        sr = decode(x0_hat)
        with torch.autocast(device_type=sr.device.type, enabled=False):
            loss = guidance_loss(sr.float(), y.float(), sf, mu, target)
        if not loss.requires_grad:  # x0_hat does not depend on z_t: nothing a z_t step can change
            return z_t
        (grad,) = torch.autograd.grad(loss, z_t, allow_unused=True)
        return z_t if grad is None else z_t - step * grad.to(z_t.dtype)

    return hook


def lr_consistency_x0_guidance(
    y: Tensor,
    decode: Decoder,
    lambdas: Tensor,
    *,
    sf: int,
    mu: float = 0.0,
) -> X0Guidance:
    """The estimate-space hook: ``x0_hat <- x0_hat - lambda_t grad_{x0_hat} L(x0_hat)`` (same L and arguments as
    ``lr_consistency_guidance``).

    The gradient runs through the decoder only, not the denoiser, so a guided step costs one decoder pass more
    than an unguided one, and the correction reaches the output even where the denoiser's x0_hat hardly depends
    on z_t (a model that predicts the residual from its LR condition). At t = 0 the corrected estimate is the
    sample. This is the estimate-space counterpart of the paper's z_t update (as in manifold-preserving guided
    diffusion); ``step_sizes(..., space="x0")`` gives its lambdas.
    """
    y = y.detach()
    target = spectral_target(y, sf) if mu else None
    sizes = [float(v) for v in lambdas]

    def hook(x0_hat: Tensor, t: Tensor) -> Tensor:
        step = _step_size(sizes, t)
        if step == 0.0:
            return x0_hat
        x0 = x0_hat.detach().requires_grad_(True)
        with torch.enable_grad():
            sr = decode(x0)
            with torch.autocast(device_type=sr.device.type, enabled=False):
                loss = guidance_loss(sr.float(), y.float(), sf, mu, target)
            (grad,) = torch.autograd.grad(loss, x0)
        return (x0 - step * grad.to(x0.dtype)).detach()

    return hook


__all__ = [
    "FIT_BINS",
    "FIT_HIGH",
    "MIN_PRIOR_SIDE",
    "PRIOR_BINS",
    "SCHEDULES",
    "SPACES",
    "Decoder",
    "GuidanceSchedule",
    "GuidanceSpace",
    "SpectralPriorError",
    "frequency_radius",
    "guidance_loss",
    "log_amplitude",
    "log_amplitude_distance",
    "lr_consistency",
    "lr_consistency_guidance",
    "lr_consistency_x0_guidance",
    "power_law_fit",
    "ring_log_power",
    "spectral_prior",
    "spectral_target",
    "step_sizes",
]
