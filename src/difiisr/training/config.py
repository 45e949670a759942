"""Typed training configuration: frozen dataclasses built from a YAML preset plus ``key=value`` overrides.

Shipped presets: ``train_tiny`` (pixel-space tiny model, 64x64 crops, CPU minutes) and ``train_x4`` (the reference
ResShift/DifIISR recipe: AdamW lr 5e-5, 5k warm-up, global batch 64, 256x256 crops, EMA 0.999).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from difiisr.config import ConfigError, load_config, preset_path, to_mapping
from difiisr.inference.settings import InferenceSettings


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model to train: a model preset (``tiny``, ``x4`` or a YAML path) plus ``key=value`` overrides."""

    preset: str = "tiny"
    overrides: tuple[str, ...] = ()
    # VQGAN f4 weights (released ``autoencoder_vq_f4.pth`` or a safetensors file); required for latent presets.
    autoencoder_ckpt: str | None = None


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training data: a pairs folder (``paired``) or a folder of HR images with on-the-fly degradation (``online``)."""

    mode: Literal["paired", "online"] = "paired"
    # paired: a folder with hr/ and lr/ (written by 'difiisr degrade'); online: a folder of HR images.
    train_dir: str = ""
    gt_size: int = 64
    hflip: bool = True
    # Global batch per optimizer step: processes x grad_accum x per-process micro-batch.
    batch_size: int = 8
    workers: int = 0
    # online mode: RealESRGANConfig field overrides (empty = the reference second-order settings).
    degradation: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gt_size <= 0 or self.gt_size % 4:
            raise ConfigError(
                f"data.gt_size={self.gt_size}: must be a positive multiple of 4 (the x4 scale)",
                key="data.gt_size",
            )
        if self.batch_size <= 0:
            raise ConfigError(
                f"data.batch_size={self.batch_size}: must be >= 1 (the global batch per step)",
                key="data.batch_size",
            )
        if self.workers < 0:
            raise ConfigError(
                f"data.workers={self.workers}: must be >= 0 (0 loads in the training process)",
                key="data.workers",
            )
        if self.mode == "paired" and self.degradation:
            raise ConfigError(
                "data.degradation is only used with data.mode=online; remove it or set mode: online",
                key="data.degradation",
            )


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with a linear warm-up, then a constant or cosine learning rate."""

    lr: float = 5e-5
    # cosine schedule: the learning rate reached at max_steps.
    min_lr: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 5000
    schedule: Literal["constant", "cosine"] = "constant"
    grad_accum: int = 1
    # Clip the global gradient norm to this value; null disables clipping (the norm is still logged).
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr={self.lr}: must be > 0 (the reference uses 5e-5)", key="optim.lr")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(
                f"optim.min_lr={self.min_lr}: must be in [0, optim.lr={self.lr}]", key="optim.min_lr"
            )
        if self.warmup_steps < 0:
            raise ConfigError(
                f"optim.warmup_steps={self.warmup_steps}: must be >= 0", key="optim.warmup_steps"
            )
        if self.grad_accum < 1:
            raise ConfigError(f"optim.grad_accum={self.grad_accum}: must be >= 1", key="optim.grad_accum")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(
                f"optim.grad_clip={self.grad_clip}: must be > 0, or null to disable clipping",
                key="optim.grad_clip",
            )
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(
                f"optim.betas={list(self.betas)}: both must be in [0, 1), e.g. [0.9, 0.999]",
                key="optim.betas",
            )


@dataclasses.dataclass(frozen=True)
class MlflowConfig:
    """MLflow tracking; the server is whatever ``MLFLOW_TRACKING_URI`` says (default ``sqlite:///mlflow.db``)."""

    enabled: bool = True
    experiment: str = "difiisr-train"
    run_name: str | None = None
    # Log as a child of this run (a pipeline run's parent run, same experiment); null: a top-level run.
    parent_run_id: str | None = None


@dataclasses.dataclass(frozen=True)
class ValidationConfig:
    """Periodic validation of the EMA model on a held-out pairs folder (PSNR_Y vs HR and vs bicubic)."""

    dir: str | None = None
    n_images: int = 4
    sampler: Literal["onestep", "ddim", "ancestral"] = "ancestral"
    # Sampling steps (respacing); null uses the model's diffusion.steps.
    steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise ConfigError(f"validation.n_images={self.n_images}: must be >= 1", key="validation.n_images")
        self.settings()  # a sampler/steps combination inference would refuse is refused here, at load time

    def settings(self) -> InferenceSettings:
        """The ``InferenceSettings`` validation samples with (the shared defaults for everything not set here)."""
        from difiisr.inference.settings import SettingsError

        try:
            return InferenceSettings(sampler=self.sampler, steps=self.steps, seed=self.seed)
        except SettingsError as exc:
            raise ConfigError(f"validation: {exc}", key="validation.steps") from None


@dataclasses.dataclass(frozen=True)
class SpectralLossConfig:
    """Visual / thermal-spectrum loss: L1 of log(1+|FFT|) between the decoded prediction and the HR crop."""

    # 0 turns the term off.
    weight: float = 0.0
    # Radial frequency weighting (f / f_max)^radial_power, normalised to mean 1; 0 weights all equally.
    radial_power: float = 0.0

    def __post_init__(self) -> None:
        for key in ("weight", "radial_power"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"losses.spectral.{key}={value}: must be >= 0", key=f"losses.spectral.{key}"
                )


@dataclasses.dataclass(frozen=True)
class PerceptualLossConfig:
    """Perceptual loss: VGG feature MSE at ReLU ``layers``, from a LOCAL torchvision VGG weights file only."""

    # 0 turns the term off; without an existing weights_file the term is skipped with a warning.
    weight: float = 0.0
    weights_file: str | None = None
    arch: Literal["vgg16", "vgg19"] = "vgg16"
    layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(
                f"losses.perceptual.weight={self.weight}: must be >= 0", key="losses.perceptual.weight"
            )


@dataclasses.dataclass(frozen=True)
class LossesConfig:
    """Optional training-time guidance losses on the decoded x0_hat vs HR, added to the diffusion loss (all off
    by default). Latent presets decode a random ``decode_crop``^2 sub-crop of the latent (memory); pixel presets
    use the whole crop."""

    spectral: SpectralLossConfig = dataclasses.field(default_factory=SpectralLossConfig)
    perceptual: PerceptualLossConfig = dataclasses.field(default_factory=PerceptualLossConfig)
    # Side (latent pixels) of the decoded sub-crop; null decodes the whole latent crop.
    decode_crop: int | None = 32
    # Recompute the decoder's activations in the backward pass (less memory, one more decoder forward).
    decode_checkpoint: bool = False

    def __post_init__(self) -> None:
        if self.decode_crop is not None and self.decode_crop < 1:
            raise ConfigError(
                f"losses.decode_crop={self.decode_crop}: must be >= 1 latent pixels, or null for the whole crop",
                key="losses.decode_crop",
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; ``out_dir`` receives checkpoints, logs and the exported model folder."""

    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    ema_decay: float = 0.999
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    compile: bool = False
    max_steps: int = 1000
    log_every: int = 10
    # Validate every N steps and at the end (0: only at the end); needs validation.dir.
    val_every: int = 0
    save_every: int = 1000
    keep_checkpoints: int = 3
    seed: int = 0
    out_dir: str = "outputs/train"
    # A released UNet checkpoint to fine-tune from (strict key check).
    init_from: str | None = None
    mlflow: MlflowConfig = dataclasses.field(default_factory=MlflowConfig)
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)
    losses: LossesConfig = dataclasses.field(default_factory=LossesConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(
                f"ema_decay={self.ema_decay}: must be in [0, 1) (the reference uses 0.999)", key="ema_decay"
            )
        for key in ("max_steps", "log_every", "save_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)}: must be >= 1", key=key)
        if self.val_every < 0:
            raise ConfigError(
                f"val_every={self.val_every}: must be >= 0 (0 validates only at the end)", key="val_every"
            )
        if not self.out_dir:
            raise ConfigError(
                "out_dir is empty; set out_dir to the folder for checkpoints and the model", key="out_dir"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain mapping (YAML-serialisable) of this config."""
        return to_mapping(self)


def load_train_config(path_or_name: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a training config from a YAML file or a shipped preset name (``train_tiny``), then apply overrides.

    Errors name the file or the ``--set`` override at fault, and the key, separately.
    """
    candidate = Path(path_or_name)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        path = candidate
    else:
        path = preset_path(str(path_or_name))
    return load_config(TrainConfig, path, overrides)
