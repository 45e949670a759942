"""``Upscaler``: LR image(s) -> x4 SR with a ResShift-family model (SwinUNet + optional VQGAN f4).

Pipeline (as the reference ResShift/SinSR/DifIISR samplers): y in [-1,1] is reflect-padded to the network's size
multiple; ``Conditioner.condition`` forms z_y and the LQ input (``difiisr.models.conditioning``); the sampler of
``settings.sampler`` (``difiisr.diffusion.SAMPLERS``) turns the prior sample z_y + kappa sqrt(eta_T) eps into x0;
the output is ``Conditioner.decode(x0)``, clamped to [-1,1] and cropped back.

Large images are cut into tiles in LR pixels (``tiling.py``) and processed ``settings.batch`` tiles at a time,
tiles of several images together; tile outputs are blended with Gaussian weights. All noise (the prior and, for
the ancestral sampler, every step) is drawn ONCE for the whole padded image from a CPU generator seeded with
``settings.seed``; a tile takes its slice, so overlapping tiles see the same noise, the blend has no seams, and
the noise does not depend on the device.

How to upscale is an ``InferenceSettings`` (``settings.py``): the one set of defaults shared by the CLI,
evaluation, the pyfunc, training validation and the batch job.

Autograd: unguided sampling runs entirely under ``torch.inference_mode()``. With gradient guidance
(``settings.guidance``, ``difiisr.diffusion.guidance``) the work runs under ``torch.no_grad()`` instead, and only
the guided steps enable autograd: the sampler takes the denoiser's x0_hat with a graph back to z_t, and the hook
decodes it through ``Conditioner.decode_differentiable`` against the chunk's padded LR tile. Conditioning, the
unguided steps and the final decode stay gradient-free, so they compute the same numbers as without guidance.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from difiisr.diffusion import SAMPLERS, Guidance, ResShiftDiffusion
from difiisr.diffusion.guidance import lr_consistency_guidance, lr_consistency_x0_guidance, step_sizes
from difiisr.diffusion.samplers import X0Guidance
from difiisr.errors import DifiisrError
from difiisr.inference.settings import DEVICES, InferenceSettings, SettingsError
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
from difiisr.models.builder import build_networks, load_networks
from difiisr.models.conditioning import Conditioner
from difiisr.models.preset import ModelPreset, load_preset
from difiisr.models.swin_unet import SwinUNet
from difiisr.models.vqgan import VQGANf4

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class UpscaleError(DifiisrError, ValueError):
    """Bad upscaling input or settings (shape, range, device, weights); the message says the fix."""


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


def resolve_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """Compute dtype for ``precision``: ``auto`` = bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."""
    if precision in _DTYPES:
        return _DTYPES[precision]
    if precision != "auto":
        raise UpscaleError(f"precision {precision!r} is unknown; use auto, {', '.join(_DTYPES)}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def weights_digest(preset: ModelPreset, *modules: nn.Module | None) -> str:
    """sha256 (hex, first 16) of the preset and every tensor of ``modules``: the identity of a model's outputs."""
    h = hashlib.sha256(json.dumps(preset.to_dict(), sort_keys=True, separators=(",", ":")).encode())
    for index, module in enumerate(modules):
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"{index}:{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


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
    ) -> None:
        if preset.latent and autoencoder is None:
            raise UpscaleError(f"preset {preset.name!r} works in VQGAN latent space; pass its autoencoder")
        if not preset.latent and autoencoder is not None:
            raise UpscaleError(f"preset {preset.name!r} works in pixel space; pass autoencoder=None")
        self.preset = preset
        self.device = resolve_device(device)
        self.unet = self._freeze(unet)
        self.autoencoder = None if autoencoder is None else self._freeze(autoencoder)
        self.conditioner = Conditioner(preset, self.autoencoder)
        self._base_diffusion = ResShiftDiffusion(preset.diffusion)
        self._diffusions: dict[int | None, ResShiftDiffusion] = {None: self._base_diffusion}
        self._digest: str | None = None

    def _freeze(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_folder(cls, model_dir: str | Path, device: str | torch.device = "auto") -> Upscaler:
        """Load a model folder (``model.yaml`` + safetensors, see ``difiisr.models.bundle``)."""
        from difiisr.models.bundle import load_model_folder

        bundle = load_model_folder(model_dir)
        unet, autoencoder = load_networks(
            bundle.preset,
            unet_weights=bundle.unet_state_dict,
            autoencoder_weights=bundle.autoencoder_state_dict,
        )
        return cls(bundle.preset, unet, autoencoder, device=device)

    @classmethod
    def from_checkpoints(
        cls,
        preset: ModelPreset | str | Path,
        unet_ckpt: str | Path,
        vae_ckpt: str | Path | None = None,
        device: str | torch.device = "auto",
    ) -> Upscaler:
        """Build the preset's networks and load checkpoints (released ``.pth`` or safetensors; strict)."""
        preset = _as_preset(preset)
        if preset.latent and vae_ckpt is None:
            raise UpscaleError(
                f"preset {preset.name!r} is latent: pass the VQGAN checkpoint too (--vae-ckpt autoencoder_vq_f4.pth)"
            )
        if not preset.latent and vae_ckpt is not None:
            raise UpscaleError(
                f"preset {preset.name!r} works in pixel space and has no autoencoder; drop --vae-ckpt"
            )
        unet, autoencoder = load_networks(preset, unet_weights=unet_ckpt, autoencoder_weights=vae_ckpt)
        return cls(preset, unet, autoencoder, device=device)

    @classmethod
    def from_random(
        cls,
        preset: ModelPreset | str | Path,
        *,
        seed: int = 0,
        device: str | torch.device = "auto",
    ) -> Upscaler:
        """Random-init networks of a preset (seeded; for demos, tests and benchmarks only -- the output is noise)."""
        preset = _as_preset(preset)
        unet, autoencoder = build_networks(preset, seed=seed)
        return cls(preset, unet, autoencoder, device=device)

    # ------------------------------------------------------------------ identity and geometry

    @property
    def digest(self) -> str:
        """Identity of this model's outputs: sha256 (first 16 hex) of the preset and all weights (cached)."""
        if self._digest is None:
            self._digest = weights_digest(self.preset, self.unet, self.autoencoder)
        return self._digest

    @property
    def sf(self) -> int:
        """Scale factor (4)."""
        return int(self.preset.sf)

    @property
    def net_scale(self) -> int:
        """Network (diffusion-space) pixels per LR pixel: 1 for x4 latent (f4 VQGAN), ``sf`` in pixel space."""
        try:
            return self.conditioner.net_scale
        except ValueError as exc:
            raise UpscaleError(str(exc)) from None

    @property
    def lr_multiple(self) -> int:
        """LR sides are reflect-padded to a multiple of this (the network's size multiple in LR pixels)."""
        return lr_size_multiple(self.unet.size_multiple, self.net_scale)

    @property
    def noise_channels(self) -> int:
        """Channels of the diffusion state (VQGAN embed_dim in latent presets, 3 in pixel space)."""
        return self.conditioner.channels

    def check(self, settings: InferenceSettings) -> None:
        """Raise ``SettingsError`` when ``settings`` cannot run on this model (call once, before any work)."""
        settings.check_steps(self.preset.diffusion.steps)

    def diffusion(self, steps: int | None = None) -> ResShiftDiffusion:
        """The preset's diffusion process, respaced to ``steps`` when given (cached per ``steps``)."""
        if steps not in self._diffusions:
            InferenceSettings(sampler="ddim", steps=steps).check_steps(self.preset.diffusion.steps)
            self._diffusions[steps] = self._base_diffusion.respaced(steps)
        return self._diffusions[steps]

    # ------------------------------------------------------------------ core

    def _autocast(self, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _model(self, x: Tensor, t: Tensor, lq: Tensor | None) -> Tensor:
        return self.unet(x, t, lq).float()

    def _run_chunk(
        self, y: Tensor, noise: Tensor, diffusion: ResShiftDiffusion, settings: InferenceSettings
    ) -> Tensor:
        """A batch of (padded) LR crops ``(n,3,h,w)`` in [-1,1] + their noise ``(draws,n,C,H,W)`` ->
        ``(n,3,sf*h,sf*w)`` float32, clamped to [-1,1]."""
        y = y.to(self.device, torch.float32)
        noise = noise.to(self.device, torch.float32)
        with self._autocast(resolve_dtype(self.device, settings.precision)):
            z_y, lq = self.conditioner.condition(y)
            hooks = self._guidance(y, diffusion, settings)
            x0 = SAMPLERS[settings.sampler](self._model, diffusion, z_y, lq, noise, **hooks)
            out = self.conditioner.decode(x0)
        return out.clamp_(-1.0, 1.0)

    def _lambdas(self, diffusion: ResShiftDiffusion, settings: InferenceSettings) -> Tensor | None:
        """Per-step guidance sizes ``(T,)`` for ``settings``, or None when no step is guided (off, or scale 0)."""
        if settings.guidance == "none":
            return None
        lambdas = step_sizes(
            settings.guidance_schedule,
            settings.guidance_scale,
            diffusion.etas,
            settings.guidance_steps,
            space=settings.guidance_space,
        )
        return lambdas if bool((lambdas != 0).any()) else None

    def _guidance(
        self, y: Tensor, diffusion: ResShiftDiffusion, settings: InferenceSettings
    ) -> dict[str, Guidance | X0Guidance]:
        """The sampler's guidance keyword (``guidance`` or ``x0_guidance``, by ``settings.guidance_space``) for
        the padded LR chunk ``y`` ``(n,3,h,w)``; empty without guidance."""
        lambdas = self._lambdas(diffusion, settings)
        if lambdas is None:
            return {}

        def decode(z: Tensor) -> Tensor:
            return self.conditioner.decode_differentiable(z, checkpoint=settings.guidance_checkpoint)

        if settings.guidance_space == "x0":
            hook = lr_consistency_x0_guidance(y, decode, lambdas, sf=self.sf, mu=settings.guidance_spectral)
            return {"x0_guidance": hook}
        return {
            "guidance": lr_consistency_guidance(y, decode, lambdas, sf=self.sf, mu=settings.guidance_spectral)
        }

    def _noise(self, batch: int, height: int, width: int, draws: int, seed: int) -> Tensor:
        """``(B, draws, C, height, width)`` float32 standard normal; every image draws from its own CPU generator
        seeded with ``seed``, so an image gets the same noise alone or in any batch, on any device."""
        per_image = []
        for _ in range(batch):
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            shape = (self.conditioner.channels, height, width)
            per_image.append(
                torch.stack(
                    [torch.randn(shape, generator=generator, dtype=torch.float32) for _ in range(draws)]
                )
            )
        return torch.stack(per_image)

    def upscale_tensor(
        self, y: Tensor, settings: InferenceSettings | None = None, *, progress: bool = False
    ) -> Tensor:
        """``(B,3,h,w)`` float in [-1,1] -> ``(B,3,sf*h,sf*w)`` float32 in [-1,1] (on ``y``'s device).

        ``settings.tile`` (LR pixels, rounded to the size multiple; None = never tile) splits larger images into
        tiles overlapping by ``tile_overlap`` LR pixels, run ``batch`` at a time; ``settings.seed`` fixes all noise.
        """
        settings = settings or InferenceSettings()
        y = self._check_input(y)
        self.check(settings)
        sampler = SAMPLERS[settings.sampler]
        diffusion = self.diffusion(settings.steps)
        b, _, h, w = y.shape
        m, r, sf = self.lr_multiple, self.net_scale, self.sf
        hp, wp = ceil_to_multiple(h, m), ceil_to_multiple(w, m)
        tile = settings.tile
        if tile and (h > tile or w > tile):
            tile_size = round_to_multiple(tile, m)
            if settings.tile_overlap >= tile_size:
                raise SettingsError(
                    f"tile_overlap={settings.tile_overlap} must be smaller than the tile ({tile} rounded to the "
                    f"size multiple {m}: {tile_size}); lower --tile-overlap or raise --tile"
                )
            tiles = plan_tiles(hp, wp, tile_size, settings.tile_overlap)
        else:
            tiles = [Tile(0, 0, hp, wp)]
        y_pad = reflect_pad(y.detach().to("cpu", torch.float32), hp, wp)
        noise = self._noise(b, hp * r, wp * r, sampler.noise_draws(diffusion.num_timesteps), settings.seed)
        items = [(index, t) for index in range(b) for t in tiles]
        chunks = list(batched(items, settings.batch))
        blender = None if len(tiles) == 1 else TileBlender(b, 3, hp * sf, wp * sf)
        singles: list[Tensor] = []
        # guided steps need autograd: then only no_grad here (inference tensors cannot enter a graph)
        guided = self._lambdas(diffusion, settings) is not None
        with torch.no_grad() if guided else torch.inference_mode():
            for chunk in tqdm(
                chunks, desc="tiles", unit="batch", leave=False, disable=not progress or len(chunks) < 2
            ):
                out = self._run_chunk(
                    stack_crops(y_pad, chunk), _stack_noise(noise, chunk, r), diffusion, settings
                )
                if blender is None:  # untiled: whole images, in order
                    singles.append(out.to(y.device))
                    continue
                for (index, t), o in zip(chunk, out.cpu(), strict=True):
                    blender.add(index, *t.slices(sf), o)
        result = torch.cat(singles) if blender is None else blender.result().clamp_(-1.0, 1.0)
        return result[:, :, : h * sf, : w * sf].contiguous().to(y.device)

    def upscale_array(
        self, pixels: np.ndarray, settings: InferenceSettings | None = None, *, progress: bool = False
    ) -> np.ndarray:
        """``(H,W)`` grey or ``(H,W,3)`` RGB uint8/uint16 -> same form and dtype at ``(sf*H, sf*W)``."""
        return self.upscale_arrays([pixels], settings, progress=progress)[0]

    def upscale_arrays(
        self,
        images: Sequence[np.ndarray],
        settings: InferenceSettings | None = None,
        *,
        progress: bool = False,
    ) -> list[np.ndarray]:
        """Several images (each ``(H,W)`` or ``(H,W,3)``, uint8/uint16) -> their x``sf`` SR, same form and dtype.

        Images of the same shape, dtype and form run as one batch (their tiles share network calls); the output
        of each image equals what ``upscale_array`` gives it alone with the same settings.
        """
        from difiisr.io import image_to_tensor, tensor_to_image

        for pixels in images:
            if not isinstance(pixels, np.ndarray) or pixels.dtype not in (np.uint8, np.uint16):
                got = pixels.dtype if isinstance(pixels, np.ndarray) else type(pixels).__name__
                raise UpscaleError(f"pixels must be a uint8 or uint16 numpy array, got {got}")
            if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
                raise UpscaleError(f"pixels must be (H,W) grey or (H,W,3) RGB, got shape {pixels.shape}")
        outputs: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[tuple[int, ...], str], list[int]] = {}
        for i, pixels in enumerate(images):
            groups.setdefault((pixels.shape, str(pixels.dtype)), []).append(i)
        for (shape, dtype), indices in groups.items():
            y = torch.cat([image_to_tensor(images[i]) for i in indices])
            out = self.upscale_tensor(y, settings, progress=progress)
            bit_depth = 16 if dtype == "uint16" else 8
            for k, i in enumerate(indices):
                outputs[i] = tensor_to_image(
                    out[k : k + 1], bit_depth=bit_depth, channels=1 if len(shape) == 2 else 3
                )
        return [o for o in outputs if o is not None]

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


__all__ = [
    "DEVICES",
    "UpscaleError",
    "Upscaler",
    "resolve_device",
    "resolve_dtype",
    "weights_digest",
]
