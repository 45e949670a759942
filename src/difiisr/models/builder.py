"""Build a preset's networks: the one place where training and inference construct and load them.

``build_networks`` makes the denoiser and (latent presets) the autoencoder of a ``ModelPreset`` with a seeded
initialisation that leaves torch's global RNG untouched; ``load_networks`` does the same and then loads weight
files (released ``.pth`` or safetensors, strict key check) or a model folder's state dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from difiisr.models.checkpoint import load_checkpoint
from difiisr.models.preset import ModelPreset
from difiisr.models.swin_unet import SwinUNet
from difiisr.models.vqgan import VQGANf4


def build_networks(preset: ModelPreset, *, seed: int | None = None) -> tuple[SwinUNet, VQGANf4 | None]:
    """Random-init ``(unet, autoencoder)`` of ``preset`` (autoencoder None in pixel space).

    With ``seed`` the initialisation is reproducible and torch's global RNG state is restored afterwards.
    """
    if seed is None:
        return _construct(preset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return _construct(preset)


def _construct(preset: ModelPreset) -> tuple[SwinUNet, VQGANf4 | None]:
    unet = SwinUNet(preset.unet)
    autoencoder = VQGANf4(preset.autoencoder) if preset.latent and preset.autoencoder is not None else None
    return unet, autoencoder


def load_networks(
    preset: ModelPreset,
    *,
    unet_weights: str | Path | Mapping[str, torch.Tensor] | None = None,
    autoencoder_weights: str | Path | Mapping[str, torch.Tensor] | None = None,
    seed: int | None = None,
) -> tuple[SwinUNet, VQGANf4 | None]:
    """``build_networks`` then load weights (a checkpoint file or a state dict) into each network, strictly.

    A network whose weights are None keeps its (seeded) random initialisation. ``autoencoder_weights`` on a
    pixel-space preset raises ``CheckpointError``: such a model has no autoencoder.
    """
    from difiisr.models.checkpoint import CheckpointError

    unet, autoencoder = build_networks(preset, seed=seed)
    if autoencoder_weights is not None and autoencoder is None:
        raise CheckpointError(
            f"preset {preset.name!r} works in pixel space and has no autoencoder; drop the VQGAN weights"
        )
    for net, weights in ((unet, unet_weights), (autoencoder, autoencoder_weights)):
        if net is None or weights is None:
            continue
        if isinstance(weights, Mapping):
            net.load_state_dict(dict(weights), strict=True)
        else:
            load_checkpoint(net, weights, strict=True)
    return unet, autoencoder


__all__ = ["build_networks", "load_networks"]
