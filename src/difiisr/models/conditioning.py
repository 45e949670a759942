"""From LR (and HR) images to the diffusion's variables: the conditioning contract of training and inference.

For a preset with scale ``sf``, an LR batch ``y`` ``(B,3,h,w)`` in [-1,1] gives

- ``y_up``: ``bicubic_upsample(y, sf)``, torch bicubic (``align_corners=False``, not clamped), as the reference
  ``encode_first_stage`` forms it;
- ``z_y``: ``encode(y_up)``: the VQGAN latent ``(B,embed_dim,sf*h/f,sf*w/f)`` in latent presets, ``y_up``
  itself in pixel presets;
- ``lq``: the LQ image the denoiser is conditioned on, at ``2**lq_downsamplings`` times the size of ``z_y``
  (the LR itself for x4 latent presets, ``y_up`` for pixel presets, a bicubic resize otherwise), or None.

The training target is ``z_0 = encode(hr)``; a sample ``x0`` goes back to pixels with ``decode``, or with
``decode_differentiable`` where a gradient must flow back to it (gradient guidance, training losses on pixels).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

from difiisr.models.preset import ModelPreset
from difiisr.models.vqgan import VQGANf4


def bicubic_upsample(y: Tensor, sf: int) -> Tensor:
    """``(B,C,h,w)`` -> ``(B,C,sf*h,sf*w)``: torch bicubic, ``align_corners=False``, not clamped."""
    return F.interpolate(y, scale_factor=sf, mode="bicubic", align_corners=False)


def net_scale(preset: ModelPreset) -> int:
    """Diffusion-space pixels per LR pixel: ``sf / f`` for latent presets (1 for x4 with VQGAN f4), ``sf`` in pixel space."""
    if not preset.latent:
        return int(preset.sf)
    assert preset.autoencoder is not None
    down = preset.autoencoder.downsample_factor
    if preset.sf % down:
        raise ValueError(
            f"preset {preset.name!r}: sf={preset.sf} is not a multiple of the VQGAN factor {down}"
        )
    return int(preset.sf) // down


def lq_input(preset: ModelPreset, y: Tensor, y_up: Tensor, net_hw: tuple[int, int]) -> Tensor | None:
    """The LQ conditioning at the size the denoiser wants for a ``net_hw`` input (None without ``cond_lq``).

    Size = ``net_hw x 2**lq_downsamplings``: ``y`` or ``y_up`` when one of them has it, else ``y`` resized bicubic.
    """
    cfg = preset.unet
    if not cfg.cond_lq:
        return None
    scale = 2**cfg.lq_downsamplings
    size = (net_hw[0] * scale, net_hw[1] * scale)
    for candidate in (y, y_up):
        if tuple(candidate.shape[-2:]) == size:
            return candidate
    return F.interpolate(y, size=size, mode="bicubic", align_corners=False)


@dataclasses.dataclass
class Conditioner:
    """The diffusion space of one preset: encode/decode through its autoencoder (identity in pixel space)."""

    preset: ModelPreset
    autoencoder: VQGANf4 | None

    def __post_init__(self) -> None:
        if self.preset.latent and self.autoencoder is None:
            raise ValueError(f"preset {self.preset.name!r} works in VQGAN latent space; pass its autoencoder")
        if not self.preset.latent and self.autoencoder is not None:
            raise ValueError(f"preset {self.preset.name!r} works in pixel space; pass autoencoder=None")

    @property
    def channels(self) -> int:
        """Channels of the diffusion variable (VQGAN ``embed_dim`` in latent presets, 3 in pixel space)."""
        return self.preset.autoencoder.embed_dim if self.preset.autoencoder is not None else 3

    @property
    def net_scale(self) -> int:
        """Diffusion-space pixels per LR pixel (see ``net_scale``)."""
        return net_scale(self.preset)

    def encode(self, x: Tensor) -> Tensor:
        """Pixels ``(B,3,H,W)`` in [-1,1] -> diffusion space (float32; the input itself in pixel space)."""
        return x if self.autoencoder is None else self.autoencoder.encode(x).float()

    def decode(self, z: Tensor) -> Tensor:
        """Diffusion space -> pixels ``(B,3,H,W)`` float32, not clamped."""
        return z.float() if self.autoencoder is None else self.autoencoder.decode(z).float()

    def decode_differentiable(self, z: Tensor, *, checkpoint: bool = False) -> Tensor:
        """``decode`` with a gradient to ``z``: pixels ``(B,3,H,W)`` float32, not clamped (pixel space: ``z``).

        The VQGAN's nearest-code lookup has no gradient, so it is passed straight through (forward: the code;
        backward: identity), and the plain decoder modules run with autograd. ``checkpoint`` recomputes each
        decoder level in the backward pass instead of keeping its activations (``torch.utils.checkpoint``): less
        memory, about one more decoder forward of time. The forward values equal ``decode``'s plain path.
        """
        if self.autoencoder is None:
            return z.float()
        ae = self.autoencoder
        quantized = z + (ae.quantize(z) - z).detach()
        return _decode_levels(ae.decoder, ae.post_quant_conv(quantized), checkpoint).float()

    def condition(self, y: Tensor) -> tuple[Tensor, Tensor | None]:
        """LR ``(B,3,h,w)`` in [-1,1] -> ``(z_y, lq)``."""
        y_up = bicubic_upsample(y, self.preset.sf)
        z_y = self.encode(y_up)
        return z_y, lq_input(self.preset, y, y_up, (z_y.shape[-2], z_y.shape[-1]))

    def training_pair(self, y: Tensor, hr: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """LR and HR -> ``(z_0, z_y, lq)``; HR and the upsampled LR go through one ``encode`` call."""
        y_up = bicubic_upsample(y, self.preset.sf)
        if self.autoencoder is None:
            z0, z_y = hr, y_up
        else:
            z0, z_y = self.encode(torch.cat([hr, y_up])).chunk(2)
        return z0, z_y, lq_input(self.preset, y, y_up, (z_y.shape[-2], z_y.shape[-1]))


def _decode_levels(decoder: torch.nn.Module, h: Tensor, checkpoint: bool) -> Tensor:
    """The VQGAN ``Decoder.forward`` steps (input conv and middle, each level with its upsample, output head),
    each one checkpointed when ``checkpoint``."""

    def run(fn, x: Tensor) -> Tensor:  # noqa: ANN001 - any callable of one tensor
        return _checkpoint(fn, x, use_reentrant=False) if checkpoint else fn(x)

    def level_fn(level: torch.nn.Module):  # noqa: ANN202
        def step(x: Tensor) -> Tensor:
            x = level.run(x)
            return level.upsample(x) if hasattr(level, "upsample") else x

        return step

    h = run(lambda x: decoder.mid(decoder.conv_in(x)), h)
    for level in reversed(decoder.up):
        h = run(level_fn(level), h)
    return run(lambda x: decoder.conv_out(F.silu(decoder.norm_out(x))), h)


__all__ = ["Conditioner", "bicubic_upsample", "lq_input", "net_scale"]
