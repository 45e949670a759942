"""Model presets: one YAML file fixes the network, the autoencoder and the diffusion process together.

Shipped presets live in ``difiisr/presets/`` (``x4``: the released DifIISR/ResShift/SinSR layout in VQGAN latent
space; ``tiny``: a small pixel-space model for CPU demos and tests). A preset can also be any YAML file with the
same keys, and any value can be overridden with ``key=value`` strings (``unet.model_channels=64``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from difiisr.config import ConfigError, apply_overrides, from_mapping, load_yaml, preset_path, to_mapping
from difiisr.diffusion import DiffusionConfig
from difiisr.models.swin_unet import SwinUNetConfig
from difiisr.models.vqgan import VQGANConfig

PRESET_KEYS = ("name", "sf", "latent", "unet", "autoencoder", "diffusion")


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    """Everything that defines a model: scale factor, space (latent or pixel), networks and diffusion."""

    name: str
    sf: int
    latent: bool
    unet: SwinUNetConfig
    autoencoder: VQGANConfig | None
    diffusion: DiffusionConfig

    def __post_init__(self) -> None:
        if self.latent and self.autoencoder is None:
            raise ConfigError(f"preset {self.name!r}: latent: true needs an 'autoencoder' section")
        if not self.latent and self.autoencoder is not None:
            raise ConfigError(
                f"preset {self.name!r}: latent: false (pixel space) must have autoencoder: null"
            )
        if self.diffusion.latent != self.latent:
            raise ConfigError(
                f"preset {self.name!r}: diffusion.latent ({self.diffusion.latent}) must equal latent ({self.latent})"
            )
        if self.sf != 4:
            raise ConfigError(f"preset {self.name!r}: sf={self.sf}; only x4 models exist in this family")

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (YAML-serialisable) of this preset."""
        return to_mapping(self)


def preset_from_mapping(data: Mapping[str, Any], source: str = "preset") -> ModelPreset:
    """Build a ``ModelPreset`` from a mapping with the keys of ``PRESET_KEYS`` (extra keys are refused)."""
    unknown = sorted(set(data) - set(PRESET_KEYS))
    missing = sorted(k for k in PRESET_KEYS if k not in data)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}; a preset has {', '.join(PRESET_KEYS)}"
        )
    if missing:
        raise ConfigError(
            f"{source}: missing key(s) {', '.join(missing)}; a preset has {', '.join(PRESET_KEYS)}"
        )
    return from_mapping(ModelPreset, dict(data), source)


def load_preset(name_or_path: str | Path, overrides: Sequence[str] = ()) -> ModelPreset:
    """Load a shipped preset by name (``x4``, ``tiny``) or a YAML file by path, then apply ``key=value`` overrides."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        path = candidate
    else:
        path = preset_path(str(name_or_path))
    data = apply_overrides(load_yaml(path), overrides)
    return preset_from_mapping(data, str(path))
