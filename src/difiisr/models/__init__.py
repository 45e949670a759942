"""Networks of the DifIISR / ResShift / SinSR family with checkpoint-compatible layouts, and weight files.

``SwinUNet`` is the denoiser, ``VQGANf4`` the latent autoencoder (its CPU inference runs through the memory-lean
``vqgan_lean`` module); ``load_checkpoint`` reads released ``.pth`` checkpoints and our ``.safetensors`` files
safely. Presets (``preset``) and model folders (``bundle``) build on these.
"""

from difiisr.models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    matching_presets,
    read_state_dict,
    save_safetensors,
)
from difiisr.models.swin_unet import SwinUNet, SwinUNetConfig
from difiisr.models.vqgan import VQGANConfig, VQGANf4

__all__ = [
    "CheckpointError",
    "SwinUNet",
    "SwinUNetConfig",
    "VQGANConfig",
    "VQGANf4",
    "load_checkpoint",
    "matching_presets",
    "read_state_dict",
    "save_safetensors",
]
