"""The ResShift diffusion process: a Markov chain that shifts the residual z_y - z_0 while adding noise.

Notation (method.md section 2): z_0 is the clean image (latent or pixel), z_y the bicubic-upsampled LR in the same
space, t = 0..T-1 an integer index (T-1 noisiest), eta_t the schedule and kappa the noise scale:

    q(z_t | z_0, z_y) = N(z_0 + eta_t (z_y - z_0), kappa^2 eta_t I)

This module holds only the math. It has no network and does no I/O; a "model" is any callable
``model(x_scaled: (B,C,H,W), t: (B,) int64, lq) -> (B,C,H,W)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from difiisr.diffusion.config import DiffusionConfig
from difiisr.diffusion.schedule import exponential_sqrt_etas, space_timesteps

#: A denoising network: ``model(x_scaled (B,C,H,W), t (B,) int64 original step index, lq) -> (B,C,H,W)``.
Model = Callable[[Tensor, Tensor, Any], Tensor]

Timesteps = int | Tensor


def _work_dtype(x: Tensor) -> torch.dtype:
    """At least float32 (a bf16/fp16 state is promoted so that the chain's arithmetic stays accurate)."""
    return torch.promote_types(x.dtype, torch.float32)


def draw_noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``like`` (dtype at least float32, on ``like.device``).

    With a generator the draw happens on the generator's device and is moved, so a CPU generator gives the
    same numbers whatever device the sampling runs on. ``None`` uses torch's global RNG.
    """
    dtype = _work_dtype(like)
    if generator is None:
        return torch.randn(like.shape, device=like.device, dtype=dtype)
    noise = torch.randn(like.shape, generator=generator, device=generator.device, dtype=dtype)
    return noise.to(like.device)


class ResShiftDiffusion:
    """The ResShift forward/posterior math for one schedule (optionally respaced), in float64 tables.

    Tensors ``sqrt_etas``, ``etas``, ``etas_prev``, ``alphas``, ``posterior_variance``,
    ``posterior_log_variance_clipped``: ``(T,)`` float64 on CPU. ``timestep_map``: ``(T,)`` int64, the original
    step index of each (respaced) step; the model is always called with original indices.
    """

    def __init__(self, config: DiffusionConfig) -> None:
        self.config = config
        self.kappa = float(config.kappa)
        full = exponential_sqrt_etas(
            config.steps,
            config.min_noise_level,
            config.etas_end,
            config.kappa,
            config.power,
            config.cap_sqrt_eta,
        )
        keep = (
            list(range(config.steps))
            if config.timestep_respacing is None
            else space_timesteps(config.steps, config.timestep_respacing)
        )
        sqrt_etas = full[keep]
        etas = sqrt_etas**2
        etas_prev = np.append(0.0, etas[:-1])
        alphas = etas - etas_prev
        posterior_variance = self.kappa**2 * etas_prev / etas * alphas
        # The variance is 0 at t=0; the log uses the t=1 value there, as the reference does.
        clipped = (
            np.append(posterior_variance[1], posterior_variance[1:]) if len(etas) > 1 else posterior_variance
        )
        self.original_num_timesteps = config.steps
        self.num_timesteps = len(keep)
        self.timestep_map = torch.tensor(keep, dtype=torch.int64)
        self.sqrt_etas = torch.from_numpy(sqrt_etas)
        self.etas = torch.from_numpy(etas)
        self.etas_prev = torch.from_numpy(etas_prev)
        self.alphas = torch.from_numpy(alphas)
        self.posterior_variance = torch.from_numpy(posterior_variance)
        with np.errstate(divide="ignore"):
            self.posterior_log_variance_clipped = torch.from_numpy(np.log(clipped))

    def __repr__(self) -> str:
        return (
            f"ResShiftDiffusion(T={self.num_timesteps}, original_T={self.original_num_timesteps}, "
            f"kappa={self.kappa}, predict_type={self.config.predict_type!r}, latent={self.config.latent})"
        )

    # ------------------------------------------------------------------ indexing helpers

    def respaced(self, steps: int) -> ResShiftDiffusion:
        """A new process keeping ``steps`` of the original ``config.steps`` (reference ``space_timesteps``)."""
        return ResShiftDiffusion(dataclasses.replace(self.config, timestep_respacing=steps))

    @property
    def clip_x0(self) -> bool:
        """Whether samplers clamp x0_hat to [-1, 1] by default: pixels yes, latents never (as the reference)."""
        return not self.config.latent

    def timesteps(self, t: Timesteps, batch: int, device: torch.device | str) -> Tensor:
        """``(batch,)`` int64 step indices on ``device`` from an int or a ``(batch,)``/scalar integer tensor."""
        if isinstance(t, Tensor):
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise TypeError(f"t must hold integer step indices, got dtype {t.dtype}; pass t.long()")
            if t.ndim == 0:
                t = t.expand(batch)
            if t.shape != (batch,):
                raise ValueError(f"t has shape {tuple(t.shape)}; expected ({batch},) to match the batch")
            # Range-check CPU indices only: on an accelerator this would force a device sync every step.
            in_range = (
                t.device.type != "cpu"
                or t.numel() == 0
                or (int(t.min()) >= 0 and int(t.max()) < self.num_timesteps)
            )
            if not in_range:
                raise IndexError(
                    f"t holds {t.tolist()}; step indices must be in 0..{self.num_timesteps - 1} for this process"
                )
            return t.to(device=device, dtype=torch.int64)
        if not 0 <= int(t) < self.num_timesteps:
            raise IndexError(f"t={t}; step indices must be in 0..{self.num_timesteps - 1} for this process")
        return torch.full((batch,), int(t), dtype=torch.int64, device=device)

    def model_timesteps(self, t: Tensor) -> Tensor:
        """Original step indices ``(B,)`` int64 for (respaced) indices ``t``: what the network is given."""
        return self.timestep_map.to(t.device)[t]

    def _gather(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``table[t]`` shaped ``(B,1,...,1)`` to broadcast against ``like``, dtype at least float32."""
        values = table.to(device=t.device)[t].to(device=like.device, dtype=_work_dtype(like))
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    # ------------------------------------------------------------------ forward process

    def q_mean_variance(self, z0: Tensor, zy: Tensor, t: Timesteps) -> tuple[Tensor, Tensor]:
        """Mean ``(B,C,H,W)`` and variance ``(B,1,1,1)`` of q(z_t | z_0, z_y) = N(z_0 + eta_t (z_y - z_0), kappa^2 eta_t)."""
        tt = self.timesteps(t, z0.shape[0], z0.device)
        eta = self._gather(self.etas, tt, z0)
        return z0 + eta * (zy - z0), eta * self.kappa**2

    def q_sample(self, z0: Tensor, zy: Tensor, t: Timesteps, noise: Tensor) -> Tensor:
        """z_t = z_0 + eta_t (z_y - z_0) + kappa sqrt(eta_t) noise; all ``(B,C,H,W)``, ``noise`` standard normal."""
        if noise.shape != z0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {tuple(z0.shape)} like z0")
        tt = self.timesteps(t, z0.shape[0], z0.device)
        eta = self._gather(self.etas, tt, z0)
        sqrt_eta = self._gather(self.sqrt_etas, tt, z0)
        return z0 + eta * (zy - z0) + self.kappa * sqrt_eta * noise

    def prior_sample(
        self, zy: Tensor, generator: torch.Generator | None = None, noise: Tensor | None = None
    ) -> Tensor:
        """z_{T-1} = z_y + kappa sqrt(eta_{T-1}) noise, ``(B,C,H,W)``; noise drawn from ``generator`` unless given."""
        if noise is None:
            noise = draw_noise(zy, generator)
        elif noise.shape != zy.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {tuple(zy.shape)} like zy")
        tt = self.timesteps(self.num_timesteps - 1, zy.shape[0], zy.device)
        return zy + self.kappa * self._gather(self.sqrt_etas, tt, zy) * noise

    # ------------------------------------------------------------------ reverse process

    def posterior_mean_variance(self, x0: Tensor, z_t: Tensor, t: Timesteps) -> tuple[Tensor, Tensor]:
        """Mean ``(B,C,H,W)`` and variance ``(B,1,1,1)`` of q(z_{t-1} | z_t, z_0=x0).

        mean = (eta_{t-1}/eta_t) z_t + (alpha_t/eta_t) x0, var = kappa^2 (eta_{t-1}/eta_t) alpha_t (0 at t=0).
        """
        tt = self.timesteps(t, z_t.shape[0], z_t.device)
        eta = self._gather(self.etas, tt, z_t)
        coef_zt = self._gather(self.etas_prev, tt, z_t) / eta
        coef_x0 = self._gather(self.alphas, tt, z_t) / eta
        return coef_zt * z_t + coef_x0 * x0, self._gather(self.posterior_variance, tt, z_t)

    def ancestral_step(self, x0_hat: Tensor, z_t: Tensor, t: Timesteps, noise: Tensor) -> Tensor:
        """z_{t-1} = posterior mean + [t != 0] sqrt(var_t) noise; all ``(B,C,H,W)``."""
        tt = self.timesteps(t, z_t.shape[0], z_t.device)
        mean, variance = self.posterior_mean_variance(x0_hat, z_t, tt)
        nonzero = (tt != 0).to(mean.dtype).reshape(-1, *([1] * (z_t.ndim - 1)))
        return mean + nonzero * variance.sqrt() * noise

    def ddim_coefficients(self, t: Timesteps, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Deterministic-DDIM coefficients (k_t, m_t, j_t), each ``(B,1,...,1)``; they sum to 1.

        k_t = 1 - eta_{t-1} + sqrt(eta_{t-1} eta_t) - sqrt(eta_{t-1}/eta_t), m_t = sqrt(eta_{t-1}/eta_t),
        j_t = eta_{t-1} - sqrt(eta_{t-1} eta_t)   (eta_{-1} = 0, so k_0 = 1, m_0 = j_0 = 0).
        """
        tt = self.timesteps(t, like.shape[0], like.device)
        eta = self._gather(self.etas, tt, like)
        eta_prev = self._gather(self.etas_prev, tt, like)
        root_prod = (eta_prev * eta).sqrt()
        m = (eta_prev / eta).sqrt()
        return 1 - eta_prev + root_prod - m, m, eta_prev - root_prod

    def ddim_step(self, x0_hat: Tensor, z_t: Tensor, zy: Tensor, t: Timesteps) -> Tensor:
        """z_{t-1} = k_t x0_hat + m_t z_t + j_t z_y (SinSR/DifIISR deterministic sampler); all ``(B,C,H,W)``."""
        k, m, j = self.ddim_coefficients(t, z_t)
        return k * x0_hat + m * z_t + j * zy

    # ------------------------------------------------------------------ network interface

    def scale_input(self, z_t: Tensor, t: Timesteps) -> Tensor:
        """Network input ``(B,C,H,W)``: z_t / sqrt(kappa^2 eta_t + 1) (latent) or z_t / (3 kappa sqrt(eta_t) + 1) (pixel).

        Identity when ``normalize_input`` is false.
        """
        if not self.config.normalize_input:
            return z_t
        tt = self.timesteps(t, z_t.shape[0], z_t.device)
        if self.config.latent:
            scale = (self._gather(self.etas, tt, z_t) * self.kappa**2 + 1).sqrt()
        else:
            scale = self._gather(self.sqrt_etas, tt, z_t) * (3 * self.kappa) + 1
        return (z_t / scale).to(z_t.dtype)

    def predict_x0(self, model_output: Tensor, z_t: Tensor, zy: Tensor, t: Timesteps) -> Tensor:
        """x0_hat ``(B,C,H,W)`` from the network output f for the configured prediction type.

        xstart: f; residual: z_y - f; epsilon: (z_t - kappa sqrt(eta_t) f - eta_t z_y)/(1 - eta_t);
        epsilon_scale: (z_t - f - eta_t z_y)/(1 - eta_t).
        """
        kind = self.config.predict_type
        if kind == "xstart":
            return model_output
        if kind == "residual":
            return zy - model_output
        tt = self.timesteps(t, z_t.shape[0], z_t.device)
        eta = self._gather(self.etas, tt, z_t)
        noise_part = model_output
        if kind == "epsilon":
            noise_part = self.kappa * self._gather(self.sqrt_etas, tt, z_t) * model_output
        return (z_t - noise_part - eta * zy) / (1 - eta)

    def training_target(self, z0: Tensor, zy: Tensor, t: Timesteps, noise: Tensor) -> Tensor:
        """What the network should output ``(B,C,H,W)`` for z_t = q_sample(z0, zy, t, noise).

        xstart: z0; residual: z_y - z0; epsilon: noise; epsilon_scale: kappa sqrt(eta_t) noise.
        """
        kind = self.config.predict_type
        if kind == "xstart":
            return z0
        if kind == "residual":
            return zy - z0
        if kind == "epsilon":
            return noise
        tt = self.timesteps(t, z0.shape[0], z0.device)
        return self.kappa * self._gather(self.sqrt_etas, tt, z0) * noise

    def denoise(
        self, model: Model, z_t: Tensor, zy: Tensor, t: Timesteps, lq: Any = None, *, clip: bool = False
    ) -> Tensor:
        """x0_hat ``(B,C,H,W)``: call ``model(scale_input(z_t, t), original t, lq)`` and convert its output.

        ``clip`` clamps x0_hat to [-1, 1] (for pixel space; latents are never clamped).
        """
        tt = self.timesteps(t, z_t.shape[0], z_t.device)
        output = model(self.scale_input(z_t, tt), self.model_timesteps(tt), lq)
        if output.shape != z_t.shape:
            raise ValueError(
                f"model returned shape {tuple(output.shape)}; expected {tuple(z_t.shape)} like z_t "
                "(check the network's out_channels)"
            )
        x0 = self.predict_x0(output, z_t, zy, tt)
        return x0.clamp(-1, 1) if clip else x0

    def training_losses(
        self,
        model: Model,
        z0: Tensor,
        zy: Tensor,
        t: Timesteps,
        lq: Any = None,
        noise: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Simple (unweighted) ResShift loss for a batch: z_t = q_sample(z0, zy, t, noise), f = model(scale(z_t), t, lq).

        Returns ``mse`` ``(B,)`` = mean over (C,H,W) of (f - target)^2; ``loss`` ``(B,)`` = ``mse``, divided by
        kappa^2 eta_t for ``epsilon_scale`` (as the reference); ``pred_x0`` ``(B,C,H,W)`` (detached); ``x0_hat``,
        the same prediction with its graph to the network (for losses on it); ``z_t``.
        ``noise`` is drawn from ``generator`` when not given.
        """
        if z0.shape != zy.shape:
            raise ValueError(f"z0 has shape {tuple(z0.shape)} but zy has {tuple(zy.shape)}; they must match")
        if noise is None:
            noise = draw_noise(z0, generator)
        tt = self.timesteps(t, z0.shape[0], z0.device)
        z_t = self.q_sample(z0, zy, tt, noise)
        output = model(self.scale_input(z_t, tt), self.model_timesteps(tt), lq)
        if output.shape != z0.shape:
            raise ValueError(
                f"model returned shape {tuple(output.shape)}; expected {tuple(z0.shape)} like z0 "
                "(check the network's out_channels)"
            )
        target = self.training_target(z0, zy, tt, noise)
        dtype = _work_dtype(output)
        mse = (output.to(dtype) - target.to(dtype)).pow(2).mean(dim=tuple(range(1, output.ndim)))
        loss = mse
        if self.config.predict_type == "epsilon_scale":
            loss = mse / (self.kappa**2 * self.etas.to(tt.device)[tt].to(mse.dtype))
        x0_hat = self.predict_x0(output, z_t, zy, tt)
        return {"loss": loss, "mse": mse, "pred_x0": x0_hat.detach(), "x0_hat": x0_hat, "z_t": z_t.detach()}
