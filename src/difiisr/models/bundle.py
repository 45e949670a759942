"""Model folders: the exchange format between training, evaluation, registration and upscaling.

Layout::

    DIR/model.yaml                 resolved preset (name, sf, latent, unet, autoencoder, diffusion) + meta
    DIR/unet.safetensors           denoiser weights (the EMA weights when exported by training)
    DIR/autoencoder.safetensors    VQGAN weights (latent presets only)

Weights are safetensors (no pickle). Every file is written atomically, ``model.yaml`` last, so a folder with a
``model.yaml`` is complete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from difiisr.errors import DifiisrError
from difiisr.models.preset import ModelPreset, preset_from_mapping
from difiisr.storage import atomic_path, atomic_write_text

MODEL_YAML = "model.yaml"
UNET_FILE = "unet.safetensors"
AUTOENCODER_FILE = "autoencoder.safetensors"


class ModelFolderError(DifiisrError, ValueError):
    """A model folder is missing a file or is inconsistent; the message names the folder and the fix."""


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """A loaded model folder: preset plus state dicts (on CPU) and free-form metadata."""

    preset: ModelPreset
    unet_state_dict: dict[str, torch.Tensor]
    autoencoder_state_dict: dict[str, torch.Tensor] | None
    meta: dict[str, Any]


def _contiguous_cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_model_folder(
    folder: str | Path,
    preset: ModelPreset,
    unet_state_dict: Mapping[str, torch.Tensor],
    autoencoder_state_dict: Mapping[str, torch.Tensor] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a model folder (weights as safetensors, then ``model.yaml``); returns the folder path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if preset.latent and autoencoder_state_dict is None:
        raise ModelFolderError(f"{out}: preset {preset.name!r} is latent; pass the autoencoder state dict")
    str_meta = {"format": "difiisr-model-folder/1", "preset": preset.name}
    with atomic_path(out / UNET_FILE) as tmp:
        save_file(_contiguous_cpu(unet_state_dict), str(tmp), metadata=str_meta)
    if preset.latent and autoencoder_state_dict is not None:
        with atomic_path(out / AUTOENCODER_FILE) as tmp:
            save_file(_contiguous_cpu(autoencoder_state_dict), str(tmp), metadata=str_meta)
    doc = preset.to_dict()
    doc["meta"] = dict(meta or {})
    atomic_write_text(out / MODEL_YAML, yaml.safe_dump(doc, sort_keys=False))
    return out


def read_model_yaml(folder: str | Path) -> tuple[ModelPreset, dict[str, Any]]:
    """Read ``model.yaml`` of a model folder: the preset and its ``meta`` mapping."""
    root = Path(folder)
    path = root / MODEL_YAML
    if not path.is_file():
        raise ModelFolderError(
            f"{root}: not a model folder (no {MODEL_YAML}); pass a folder written by 'difiisr train' "
            "or difiisr.models.bundle.save_model_folder"
        )
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    meta = doc.pop("meta", {}) or {}
    return preset_from_mapping(doc, str(path)), dict(meta)


def load_model_folder(folder: str | Path) -> ModelBundle:
    """Load a model folder written by ``save_model_folder`` (weights to CPU)."""
    root = Path(folder)
    preset, meta = read_model_yaml(root)
    unet_path = root / UNET_FILE
    if not unet_path.is_file():
        raise ModelFolderError(f"{root}: {UNET_FILE} is missing; the folder is incomplete, export it again")
    ae_state = None
    if preset.latent:
        ae_path = root / AUTOENCODER_FILE
        if not ae_path.is_file():
            raise ModelFolderError(
                f"{root}: preset {preset.name!r} is latent but {AUTOENCODER_FILE} is missing; export it again"
            )
        ae_state = load_file(str(ae_path))
    return ModelBundle(preset, load_file(str(unet_path)), ae_state, meta)
