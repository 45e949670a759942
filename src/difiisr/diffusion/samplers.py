"""Reverse-process samplers for a ``ResShiftDiffusion``: one-step, deterministic DDIM and ancestral.

Each takes any callable ``model(x_scaled (B,C,H,W), t (B,) int64, lq) -> (B,C,H,W)`` and returns x0 in the
diffusion space (latent or pixel), ``(B,C,H,W)``, with no final clamp (the caller decodes and clamps). x0_hat
inside the chain is clamped to [-1, 1] only when ``clip_x0`` says so (default: pixel space yes, latent never, as
in the reference samplers). The prior noise comes from ``noise`` or ``generator``; the ancestral sampler also
takes its per-step noise from ``step_noise`` or draws it from ``generator``, so one seed gives identical samples.

``SAMPLERS`` maps each sampler name to a ``Sampler``: the function plus how many full-size noise tensors it
consumes, so a caller (the tiled ``Upscaler``) can draw all noise once up front and call any sampler the same way.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from difiisr.diffusion.resshift import Model, ResShiftDiffusion, draw_noise

#: Step-level hook ``guidance(z_t (B,C,H,W), t (B,) int64, x0_hat (B,C,H,W)) -> corrected z_t (B,C,H,W)``.
#: It runs with autograd enabled; ``z_t`` requires grad and ``x0_hat`` is a differentiable function of it.
Guidance = Callable[[Tensor, Tensor, Tensor], Tensor]

#: Estimate-level hook ``x0_guidance(x0_hat (B,C,H,W), t (B,) int64) -> corrected x0_hat``, called at every step
#: after ``guidance`` and before the update (x0_hat has no graph: the hook takes its own gradients). At t = 0 the
#: corrected estimate is the sample itself.
X0Guidance = Callable[[Tensor, Tensor], Tensor]

#: One reverse update ``step(x0_hat, z_t, t (B,) int64, index) -> z_{t-1}``; ``index`` is t as a Python int.
StepFn = Callable[[Tensor, Tensor, Tensor, int], Tensor]


def sample_onestep(
    model: Model,
    diffusion: ResShiftDiffusion,
    zy: Tensor,
    lq: Any,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    clip_x0: bool | None = None,
) -> Tensor:
    """One network call (DifIISR/SinSR release): x0_hat at t = T-1 from the prior sample; ``(B,C,H,W)``.

    Runs under the caller's grad mode, so a one-step student can be trained through it.
    """
    clip = diffusion.clip_x0 if clip_x0 is None else clip_x0
    z = diffusion.prior_sample(zy, generator, noise)
    t = diffusion.timesteps(diffusion.num_timesteps - 1, zy.shape[0], zy.device)
    return diffusion.denoise(model, z, zy, t, lq, clip=clip)


def sample_ddim(
    model: Model,
    diffusion: ResShiftDiffusion,
    zy: Tensor,
    lq: Any,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    progress: bool = False,
    guidance: Guidance | None = None,
    x0_guidance: X0Guidance | None = None,
    clip_x0: bool | None = None,
) -> Tensor:
    """Deterministic DDIM with the y term over all T steps: z_{t-1} = k_t x0_hat + m_t z_t + j_t z_y; ``(B,C,H,W)``.

    ``guidance`` (optional) is called once per step with (z_t, t, x0_hat) and returns the z_t to update from;
    ``x0_guidance`` (optional) then returns the x0_hat to update with.
    """

    def step(x0_hat: Tensor, z_t: Tensor, t: Tensor, index: int) -> Tensor:
        return diffusion.ddim_step(x0_hat, z_t, zy, t)

    return _reverse_chain(
        model, diffusion, zy, lq, step, generator, noise, progress, (guidance, x0_guidance), clip_x0, "ddim"
    )


def sample_ancestral(
    model: Model,
    diffusion: ResShiftDiffusion,
    zy: Tensor,
    lq: Any,
    *,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    step_noise: Tensor | None = None,
    progress: bool = False,
    guidance: Guidance | None = None,
    x0_guidance: X0Guidance | None = None,
    clip_x0: bool | None = None,
) -> Tensor:
    """Ancestral sampling over all T steps: posterior mean + sqrt(var) noise (none at t = 0); ``(B,C,H,W)``.

    After the prior, step t = T-1..1 adds noise: ``step_noise[k]`` for the k-th of those steps when given
    (``(T-1,B,C,H,W)`` standard normal, drawn up front, e.g. once for a whole tiled image), else a fresh draw from
    ``generator`` (global RNG when None). ``guidance`` (optional) is called once per step with (z_t, t, x0_hat)
    and returns the z_t to update from; ``x0_guidance`` (optional) then returns the x0_hat to update with.
    """
    steps_with_noise = diffusion.num_timesteps - 1
    if step_noise is not None and (step_noise.ndim != zy.ndim + 1 or step_noise.shape[0] != steps_with_noise):
        raise ValueError(
            f"step_noise has shape {tuple(step_noise.shape)}; expected ({steps_with_noise}, "
            f"{', '.join(map(str, zy.shape))}): one draw per step t = T-1..1"
        )

    def step(x0_hat: Tensor, z_t: Tensor, t: Tensor, index: int) -> Tensor:
        if index == 0:
            return diffusion.ancestral_step(x0_hat, z_t, t, torch.zeros_like(z_t))
        if step_noise is None:
            return diffusion.ancestral_step(x0_hat, z_t, t, draw_noise(z_t, generator))
        drawn = step_noise[diffusion.num_timesteps - 1 - index].to(device=z_t.device, dtype=z_t.dtype)
        return diffusion.ancestral_step(x0_hat, z_t, t, drawn)

    return _reverse_chain(
        model,
        diffusion,
        zy,
        lq,
        step,
        generator,
        noise,
        progress,
        (guidance, x0_guidance),
        clip_x0,
        "ancestral",
    )


def _reverse_chain(
    model: Model,
    diffusion: ResShiftDiffusion,
    zy: Tensor,
    lq: Any,
    step: StepFn,
    generator: torch.Generator | None,
    noise: Tensor | None,
    progress: bool,
    hooks: tuple[Guidance | None, X0Guidance | None],
    clip_x0: bool | None,
    name: str,
) -> Tensor:
    """Run t = T-1..0 from the prior: x0_hat = denoise(z_t), optional guidance on z_t, then ``step``.

    Model calls run without autograd, except with ``guidance``: then z_t is a leaf requiring grad, x0_hat is
    computed from it with autograd on, and the hook's corrected z_t (detached) enters the update together with
    that same x0_hat (the model is not called again). ``hooks[1]`` (x0_guidance) then corrects that x0_hat.
    """
    guidance, x0_guidance = hooks
    clip = diffusion.clip_x0 if clip_x0 is None else clip_x0
    batch = zy.shape[0]
    with torch.no_grad():
        z = diffusion.prior_sample(zy, generator, noise)
    with tqdm(
        total=diffusion.num_timesteps, desc=f"{name} sampling", unit="step", disable=not progress
    ) as bar:
        for index in reversed(range(diffusion.num_timesteps)):
            t = diffusion.timesteps(index, batch, zy.device)
            if guidance is None:
                with torch.no_grad():
                    x0_hat = diffusion.denoise(model, z, zy, t, lq, clip=clip)
            else:
                z_in = z.detach().requires_grad_(True)
                with torch.enable_grad():
                    x0_hat = diffusion.denoise(model, z_in, zy, t, lq, clip=clip)
                    corrected = guidance(z_in, t, x0_hat)
                if corrected.shape != z.shape:
                    raise ValueError(
                        f"guidance returned shape {tuple(corrected.shape)} at t={index}; "
                        f"it must return a corrected z_t of shape {tuple(z.shape)}"
                    )
                z, x0_hat = corrected.detach(), x0_hat.detach()
            if x0_guidance is not None:
                x0_hat = x0_guidance(x0_hat, t).detach()
            with torch.no_grad():
                z = step(x0_hat, z, t, index)
            bar.update(1)
    return z


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A reverse-process sampler and the noise it consumes, callable with pre-drawn noise.

    ``noise_per_step``: the sampler adds fresh noise at every step but the last (ancestral), so it needs
    ``1 + (T-1) = T`` full-size draws; otherwise only the prior draw.
    """

    name: str
    noise_per_step: bool
    iterative: bool

    def noise_draws(self, num_timesteps: int) -> int:
        """How many ``(B,C,H,W)`` standard-normal tensors one call consumes for a T-step process."""
        return num_timesteps if self.noise_per_step else 1

    def __call__(
        self,
        model: Model,
        diffusion: ResShiftDiffusion,
        zy: Tensor,
        lq: Any,
        noise: Tensor,
        *,
        guidance: Guidance | None = None,
        x0_guidance: X0Guidance | None = None,
        progress: bool = False,
    ) -> Tensor:
        """x0 ``(B,C,H,W)`` from pre-drawn ``noise`` ``(noise_draws(T),B,C,H,W)``: [0] the prior, [k] step T-k."""
        draws = self.noise_draws(diffusion.num_timesteps)
        if noise.ndim != zy.ndim + 1 or noise.shape[0] != draws:
            raise ValueError(
                f"{self.name}: noise has shape {tuple(noise.shape)}; expected ({draws}, "
                f"{', '.join(map(str, zy.shape))})"
            )
        if not self.iterative:
            if guidance is not None or x0_guidance is not None:
                raise ValueError("onestep sampling makes one network call; guidance needs ddim or ancestral")
            return sample_onestep(model, diffusion, zy, lq, noise=noise[0])
        if self.noise_per_step:
            return sample_ancestral(
                model, diffusion, zy, lq, noise=noise[0], step_noise=noise[1:], progress=progress,
                guidance=guidance, x0_guidance=x0_guidance,
            )  # fmt: skip
        return sample_ddim(
            model,
            diffusion,
            zy,
            lq,
            noise=noise[0],
            progress=progress,
            guidance=guidance,
            x0_guidance=x0_guidance,
        )


#: Every sampler by name (read only).
SAMPLERS: Mapping[str, Sampler] = types.MappingProxyType(
    {
        "onestep": Sampler("onestep", noise_per_step=False, iterative=False),
        "ddim": Sampler("ddim", noise_per_step=False, iterative=True),
        "ancestral": Sampler("ancestral", noise_per_step=True, iterative=True),
    }
)
