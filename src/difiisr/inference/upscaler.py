"""``Upscaler``: LR image(s) -> x4 SR with a ResShift-family model (SwinUNet + optional VQGAN f4).

Pipeline (as the reference ResShift/SinSR/DifIISR samplers): y in [-1,1] is reflect-padded to the network's size
multiple; y_up = bicubic x4 of y (``F.interpolate(mode="bicubic", align_corners=False)``, not clamped, as the
reference ``encode_first_stage``); z_y = VQGAN.encode(y_up) in latent presets (y_up itself in pixel presets); the
sampler (one-step, DDIM or ancestral) turns the prior sample z_y + kappa sqrt(eta_T) eps into x0; the output is
VQGAN.decode(x0) (x0 in pixel presets), clamped to [-1,1] and cropped back.

Large images are cut into tiles in LR pixels (``tiling.py``) and processed ``batch`` tiles at a time; tile
outputs are blended with Gaussian weights. All noise (the prior and, for the ancestral sampler, every step) is
drawn ONCE for the whole padded image from a CPU generator seeded with ``seed``; a tile takes its slice, so
overlapping tiles see the same noise, the blend has no seams, and the noise does not depend on the device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from difiisr.diffusion import ResShiftDiffusion, sample_ddim, sample_onestep
from difiisr.inference.tiling import (
    Tile,
    TileBlender,
    batched,
    ceil_to_multiple,
    lr_size_multiple,
    plan_tiles,
    reflect_pad,
    round_to_multiple,
    stack_crops,
)
from difiisr.models.preset import ModelPreset, load_preset
from difiisr.models.swin_unet import SwinUNet
from difiisr.models.vqgan import VQGANf4

logger = logging.getLogger(__name__)

SamplerName = Literal["onestep", "ddim", "ancestral"]
SAMPLERS: tuple[str, ...] = ("onestep", "ddim", "ancestral")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: Defaults of ``upscale_tensor``: overlap of neighbouring tiles and tiles per network call.
DEFAULT_TILE_OVERLAP = 32
DEFAULT_BATCH = 4


class UpscaleError(ValueError):
    """Bad upscaling input or settings (shape, range, sampler, device, weights); the message says the fix."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without CUDA raises ``UpscaleError``."""
    if isinstance(device, torch.device):
        requested = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            requested = torch.device(device)
        except RuntimeError as exc:
            raise UpscaleError(
                f"device {device!r} is not a torch device; use one of {', '.join(DEVICES)}"
            ) from exc
    if requested.type == "cuda" and not torch.cuda.is_available():
        raise UpscaleError(
            f"device {str(device)!r} requested but CUDA is not available here; use --device cpu or auto"
        )
    return requested


def resolve_dtype(device: torch.device, dtype: torch.dtype | None = None) -> torch.dtype:
    """Compute dtype for autocast: given ``dtype``, else bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."""
    if dtype is not None:
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise UpscaleError(
                f"dtype {dtype} is not supported; use torch.float32, torch.bfloat16 or torch.float16"
            )
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _build_networks(preset: ModelPreset) -> tuple[SwinUNet, VQGANf4 | None]:
    unet = SwinUNet(preset.unet)
    autoencoder = VQGANf4(preset.autoencoder) if preset.latent and preset.autoencoder is not None else None
    return unet, autoencoder


def _as_preset(preset: ModelPreset | str | Path) -> ModelPreset:
    return preset if isinstance(preset, ModelPreset) else load_preset(preset)


class Upscaler:
    """x4 super-resolution with one model preset and its networks, on one device (weights kept in float32)."""

    def __init__(
        self,
        preset: ModelPreset,
        unet: SwinUNet,
        autoencoder: VQGANf4 | None,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
    ) -> None:
        if preset.latent and autoencoder is None:
            raise UpscaleError(f"preset {preset.name!r} works in VQGAN latent space; pass its autoencoder")
        if not preset.latent and autoencoder is not None:
            raise UpscaleError(f"preset {preset.name!r} works in pixel space; pass autoencoder=None")
        self.preset = preset
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        self.unet = self._freeze(unet)
        self.autoencoder = None if autoencoder is None else self._freeze(autoencoder)
        self._diffusions: dict[int | None, ResShiftDiffusion] = {}

    def _freeze(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_folder(
        cls, model_dir: str | Path, device: str | torch.device = "auto", dtype: torch.dtype | None = None
    ) -> Upscaler:
        """Load a model folder (``model.yaml`` + safetensors, see ``difiisr.models.bundle``)."""
        from difiisr.models.bundle import load_model_folder

        bundle = load_model_folder(model_dir)
        unet, autoencoder = _build_networks(bundle.preset)
        unet.load_state_dict(bundle.unet_state_dict, strict=True)
        if autoencoder is not None and bundle.autoencoder_state_dict is not None:
            autoencoder.load_state_dict(bundle.autoencoder_state_dict, strict=True)
        return cls(bundle.preset, unet, autoencoder, device=device, dtype=dtype)

    @classmethod
    def from_checkpoints(
        cls,
        preset: ModelPreset | str | Path,
        unet_ckpt: str | Path,
        vae_ckpt: str | Path | None = None,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
    ) -> Upscaler:
        """Build the preset's networks and load checkpoints (released ``.pth`` or safetensors; strict)."""
        from difiisr.models.checkpoint import load_checkpoint

        preset = _as_preset(preset)
        if preset.latent and vae_ckpt is None:
            raise UpscaleError(
                f"preset {preset.name!r} is latent: pass the VQGAN checkpoint too (--vae-ckpt autoencoder_vq_f4.pth)"
            )
        if not preset.latent and vae_ckpt is not None:
            raise UpscaleError(
                f"preset {preset.name!r} works in pixel space and has no autoencoder; drop --vae-ckpt"
            )
        unet, autoencoder = _build_networks(preset)
        load_checkpoint(unet, unet_ckpt)
        if autoencoder is not None and vae_ckpt is not None:
            load_checkpoint(autoencoder, vae_ckpt)
        return cls(preset, unet, autoencoder, device=device, dtype=dtype)

    @classmethod
    def from_random(
        cls,
        preset: ModelPreset | str | Path,
        *,
        seed: int = 0,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
    ) -> Upscaler:
        """Random-init networks of a preset (seeded; for demos, tests and benchmarks only -- the output is noise)."""
        preset = _as_preset(preset)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet, autoencoder = _build_networks(preset)
        return cls(preset, unet, autoencoder, device=device, dtype=dtype)

    # ------------------------------------------------------------------ geometry

    @property
    def sf(self) -> int:
        """Scale factor (4)."""
        return int(self.preset.sf)

    @property
    def net_scale(self) -> int:
        """Network (diffusion-space) pixels per LR pixel: 1 for x4 latent (f4 VQGAN), ``sf`` in pixel space."""
        if not self.preset.latent:
            return self.sf
        assert self.preset.autoencoder is not None
        down = self.preset.autoencoder.downsample_factor
        if self.sf % down:
            raise UpscaleError(
                f"preset {self.preset.name!r}: sf={self.sf} is not a multiple of the VQGAN factor {down}"
            )
        return self.sf // down

    @property
    def lr_multiple(self) -> int:
        """LR sides are reflect-padded to a multiple of this (the network's size multiple in LR pixels)."""
        return lr_size_multiple(self.unet.size_multiple, self.net_scale)

    @property
    def noise_channels(self) -> int:
        """Channels of the diffusion state (VQGAN embed_dim in latent presets, 3 in pixel space)."""
        return self.preset.autoencoder.embed_dim if self.preset.autoencoder is not None else 3

    def diffusion(self, steps: int | None = None) -> ResShiftDiffusion:
        """The preset's diffusion process, respaced to ``steps`` when given (cached per ``steps``)."""
        if steps not in self._diffusions:
            config = self.preset.diffusion
            if steps is not None:
                if not 1 <= steps <= config.steps:
                    raise UpscaleError(
                        f"steps={steps}: must be between 1 and the preset's {config.steps} steps"
                    )
                config = dataclasses.replace(config, timestep_respacing=steps)
            self._diffusions[steps] = ResShiftDiffusion(config)
        return self._diffusions[steps]

    # ------------------------------------------------------------------ core

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _model(self, x: Tensor, t: Tensor, lq: Tensor | None) -> Tensor:
        return self.unet(x, t, lq).float()

    def _lq(self, y: Tensor, y_up: Tensor, net_hw: tuple[int, int]) -> Tensor | None:
        """The LQ conditioning at the size the network wants (net size x lq_size/image_size)."""
        cfg = self.preset.unet
        if not cfg.cond_lq:
            return None
        scale = 2**cfg.lq_downsamplings
        size = (net_hw[0] * scale, net_hw[1] * scale)
        for candidate in (y, y_up):
            if tuple(candidate.shape[-2:]) == size:
                return candidate
        return F.interpolate(y, size=size, mode="bicubic", align_corners=False)

    def _run_chunk(
        self,
        y: Tensor,
        noise: Tensor,
        diffusion: ResShiftDiffusion,
        sampler: str,
    ) -> Tensor:
        """One batch of (padded) LR crops ``(n,3,h,w)`` in [-1,1] + their noise -> ``(n,3,sf*h,sf*w)`` float32, clamped."""
        y = y.to(self.device, torch.float32)
        noise = noise.to(self.device, torch.float32)
        y_up = F.interpolate(y, scale_factor=self.sf, mode="bicubic", align_corners=False)
        with self._autocast():
            z_y = self.autoencoder.encode(y_up).float() if self.autoencoder is not None else y_up
            lq = self._lq(y, y_up, (z_y.shape[-2], z_y.shape[-1]))
            if sampler == "onestep":
                x0 = sample_onestep(self._model, diffusion, z_y, lq, noise=noise[0])
            elif sampler == "ddim":
                x0 = sample_ddim(self._model, diffusion, z_y, lq, noise=noise[0])
            else:
                x0 = _ancestral(self._model, diffusion, z_y, lq, noise)
            out = self.autoencoder.decode(x0).float() if self.autoencoder is not None else x0.float()
        return out.clamp_(-1.0, 1.0)

    def _noise_draws(self, sampler: str, diffusion: ResShiftDiffusion) -> int:
        """Number of full-image noise tensors a sampler needs: the prior, plus one per step t=T-1..1 (ancestral)."""
        return diffusion.num_timesteps if sampler == "ancestral" else 1

    def upscale_tensor(
        self,
        y: Tensor,
        *,
        sampler: SamplerName | str = "onestep",
        steps: int | None = None,
        seed: int = 0,
        tile: int | None = None,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        batch: int = DEFAULT_BATCH,
        progress: bool = False,
    ) -> Tensor:
        """``(B,3,h,w)`` float in [-1,1] -> ``(B,3,sf*h,sf*w)`` float32 in [-1,1] (on ``y``'s device).

        ``tile`` (LR pixels, rounded to the size multiple; None/0 = never tile) splits larger images into tiles
        overlapping by ``tile_overlap`` LR pixels, run ``batch`` at a time; ``seed`` fixes all noise.
        """
        y = self._check_input(y)
        if sampler not in SAMPLERS:
            raise UpscaleError(f"sampler {sampler!r} is unknown; use one of {', '.join(SAMPLERS)}")
        if batch < 1:
            raise UpscaleError(f"batch={batch}: must be >= 1 (tiles or images per network call)")
        if (tile is not None and tile < 0) or tile_overlap < 0:
            raise UpscaleError(
                f"tile={tile}, tile_overlap={tile_overlap}: must be >= 0 LR pixels (tile 0 = no tiling)"
            )
        diffusion = self.diffusion(steps)
        b, _, h, w = y.shape
        m, r, sf = self.lr_multiple, self.net_scale, self.sf
        hp, wp = ceil_to_multiple(h, m), ceil_to_multiple(w, m)
        if tile and (h > tile or w > tile):
            tile_size = round_to_multiple(tile, m)
            if tile_overlap >= tile_size:
                raise UpscaleError(
                    f"tile_overlap={tile_overlap} must be smaller than the tile ({tile} rounded to the size "
                    f"multiple {m}: {tile_size}); lower --tile-overlap or raise --tile"
                )
            tiles = plan_tiles(hp, wp, tile_size, tile_overlap)
        else:
            tiles = [Tile(0, 0, hp, wp)]
        y_pad = reflect_pad(y.detach().to("cpu", torch.float32), hp, wp)
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.stack(
            [
                torch.randn(
                    (b, self.noise_channels, hp * r, wp * r), generator=generator, dtype=torch.float32
                )
                for _ in range(self._noise_draws(sampler, diffusion))
            ],
            dim=1,
        )  # (B, draws, C, H, W)
        items = [(index, t) for index in range(b) for t in tiles]
        chunks = list(batched(items, batch))
        blender = None if len(tiles) == 1 else TileBlender(b, 3, hp * sf, wp * sf)
        singles: list[Tensor] = []
        with torch.inference_mode():
            for chunk in tqdm(
                chunks, desc="tiles", unit="batch", leave=False, disable=not progress or len(chunks) < 2
            ):
                y_c = stack_crops(y_pad, chunk)
                noise_c = _stack_noise(noise, chunk, r)
                out = self._run_chunk(y_c, noise_c, diffusion, sampler)
                if blender is None:  # untiled: the whole image fits, keep it where the caller wants it
                    singles.append(out.to(y.device))
                    continue
                for (index, t), o in zip(chunk, out.cpu(), strict=True):
                    blender.add(index, *t.slices(sf), o)
        result = torch.cat(singles) if blender is None else blender.result().clamp_(-1.0, 1.0)
        return result[:, :, : h * sf, : w * sf].contiguous().to(y.device)

    def upscale_array(
        self,
        pixels: np.ndarray,
        *,
        sampler: SamplerName | str = "onestep",
        steps: int | None = None,
        seed: int = 0,
        tile: int | None = None,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        batch: int = DEFAULT_BATCH,
        progress: bool = False,
    ) -> np.ndarray:
        """``(H,W)`` grey or ``(H,W,3)`` RGB uint8/uint16 -> same form and dtype at ``(sf*H, sf*W)``."""
        from difiisr.io import image_to_tensor, tensor_to_image

        if not isinstance(pixels, np.ndarray) or pixels.dtype not in (np.uint8, np.uint16):
            got = pixels.dtype if isinstance(pixels, np.ndarray) else type(pixels).__name__
            raise UpscaleError(f"pixels must be a uint8 or uint16 numpy array, got {got}")
        if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
            raise UpscaleError(f"pixels must be (H,W) grey or (H,W,3) RGB, got shape {pixels.shape}")
        out = self.upscale_tensor(
            image_to_tensor(pixels),
            sampler=sampler,
            steps=steps,
            seed=seed,
            tile=tile,
            tile_overlap=tile_overlap,
            batch=batch,
            progress=progress,
        )
        bit_depth = 16 if pixels.dtype == np.uint16 else 8
        return tensor_to_image(out, bit_depth=bit_depth, channels=1 if pixels.ndim == 2 else 3)

    def _check_input(self, y: Tensor) -> Tensor:
        if not isinstance(y, Tensor):
            raise UpscaleError(f"y must be a torch.Tensor (B,3,h,w) in [-1,1], got {type(y).__name__}")
        if y.ndim != 4 or y.shape[1] != 3:
            raise UpscaleError(f"y must have shape (B,3,h,w) (RGB, R=G=B for grey), got {tuple(y.shape)}")
        if not y.dtype.is_floating_point:
            raise UpscaleError(
                f"y must be a float tensor in [-1,1], got {y.dtype}; scale pixels with image_to_tensor"
            )
        if y.shape[0] == 0 or y.shape[2] == 0 or y.shape[3] == 0:
            raise UpscaleError(f"y is empty: shape {tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise UpscaleError("y holds NaN or infinite values; check the input image")
        lo, hi = float(y.min()), float(y.max())
        if lo < -1.001 or hi > 1.001:
            raise UpscaleError(
                f"y must be in [-1,1], got values in [{lo:.4g}, {hi:.4g}]; map pixels p to 2p/max-1"
            )
        return y


def _stack_noise(noise: Tensor, chunk: Sequence[tuple[int, Tile]], scale: int) -> Tensor:
    """``(draws, n, C, h, w)``: each draw's slice for every (image, tile) of ``chunk`` (tile in LR units x scale)."""
    parts = []
    for index, t in chunk:
        rows, cols = t.slices(scale)
        parts.append(noise[index, :, :, rows, cols])
    return torch.stack(parts, dim=1)


def _ancestral(
    model: Callable[[Tensor, Tensor, Any], Tensor],
    diffusion: ResShiftDiffusion,
    zy: Tensor,
    lq: Tensor | None,
    noise: Tensor,
) -> Tensor:
    """Ancestral sampling with pre-drawn noise ``(T, B, C, H, W)``: [0] the prior, [k] the step t = T-k.

    Same steps as ``difiisr.diffusion.sample_ancestral`` (which draws per-step noise from a generator, so a tile
    could not take a slice of one whole-image draw); returns x0 ``(B,C,H,W)`` in the diffusion space.
    """
    clip = diffusion.clip_x0
    z = diffusion.prior_sample(zy, noise=noise[0])
    for k, index in enumerate(reversed(range(diffusion.num_timesteps))):
        t = diffusion.timesteps(index, zy.shape[0], zy.device)
        x0_hat = diffusion.denoise(model, z, zy, t, lq, clip=clip)
        step_noise = noise[k + 1] if index > 0 else torch.zeros_like(z)
        z = diffusion.ancestral_step(x0_hat, z, t, step_noise)
    return z


__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_TILE_OVERLAP",
    "SAMPLERS",
    "UpscaleError",
    "Upscaler",
    "resolve_device",
    "resolve_dtype",
]
