"""Validation during training: the EMA model super-resolves a held-out pairs folder; PSNR_Y vs HR and vs bicubic.

Metrics use the evaluation conventions (``difiisr.evaluation.metrics.psnr_y``: BT.601 Y, unrounded, range 1, on the
SR written at the HR's bit depth) and the evaluation bicubic baseline (PIL bicubic of the LR).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from difiisr.data.pairs import list_pairs
from difiisr.evaluation.baseline import bicubic_upscale
from difiisr.evaluation.metrics import psnr_y
from difiisr.inference.settings import InferenceSettings
from difiisr.io import image_to_tensor, read_image, tensor_to_image, write_image
from difiisr.models.preset import ModelPreset
from difiisr.registry import names

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ValidationResult:
    """Mean PSNR_Y (dB) of the model and of bicubic over ``n_images`` pairs, and the sample grid written."""

    psnr_y: float
    psnr_y_bicubic: float
    n_images: int
    grid_path: Path | None

    @property
    def gain_db(self) -> float:
        """Mean PSNR_Y of the model minus that of bicubic, in dB."""
        return self.psnr_y - self.psnr_y_bicubic

    def metrics(self) -> dict[str, float]:
        """``{"val_psnr_y", "val_psnr_y_bicubic", "val_psnr_y_gain"}`` in dB, for MLflow."""
        return {
            names.METRIC_VAL_PSNR_Y: self.psnr_y,
            names.METRIC_VAL_PSNR_Y_BICUBIC: self.psnr_y_bicubic,
            names.METRIC_VAL_PSNR_Y_GAIN: self.gain_db,
        }


def _rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def sample_grid(bicubic: np.ndarray, sr: np.ndarray, hr: np.ndarray) -> np.ndarray:
    """Side-by-side image ``bicubic | SR | HR`` (same heights and dtype; grey kept grey unless any is RGB)."""
    parts = [bicubic, sr, hr]
    if len({p.ndim for p in parts}) > 1:
        parts = [_rgb(p) for p in parts]
    return np.concatenate(parts, axis=1)


def _finite_mean(values: list[float]) -> float:
    """Mean of PSNR values; identical images (inf) count as 100 dB so one perfect image cannot hide the rest."""
    return float(np.mean([v if math.isfinite(v) else 100.0 for v in values]))


@torch.no_grad()
def validate(
    preset: ModelPreset,
    unet: nn.Module,
    autoencoder: nn.Module | None,
    pairs_dir: str | Path,
    *,
    n_images: int = 4,
    settings: InferenceSettings | None = None,
    device: torch.device | str = "cpu",
    grid_path: str | Path | None = None,
) -> ValidationResult:
    """Super-resolve the first ``n_images`` pairs (sorted by name) with ``unet`` and ``settings`` (default: the
    shared defaults with the ancestral sampler; pair i uses seed ``settings.seed + i``) and score them.

    Writes ``grid_path`` (PNG; bicubic | SR | HR of the first pair) when given.
    """
    from difiisr.inference.upscaler import Upscaler

    pairs = list_pairs(pairs_dir)[:n_images]
    upscaler = Upscaler(preset, unet, autoencoder, device=device)
    base = settings or InferenceSettings(sampler="ancestral")
    upscaler.check(base)
    sr_scores, bic_scores = [], []
    grid_written = None
    for i, pair in enumerate(pairs):
        lr_img, hr_img = read_image(pair.lr), read_image(pair.hr)
        y = image_to_tensor(lr_img.pixels)
        sr = upscaler.upscale_tensor(y, base.replace(seed=base.seed + i))
        sr_pixels = tensor_to_image(sr[0].float().cpu(), bit_depth=hr_img.bit_depth, channels=hr_img.channels)
        bicubic = bicubic_upscale(lr_img.pixels, preset.sf)
        sr_scores.append(psnr_y(sr_pixels, hr_img.pixels))
        bic_scores.append(psnr_y(bicubic, hr_img.pixels))
        if i == 0 and grid_path is not None:
            grid_written = write_image(grid_path, sample_grid(bicubic, sr_pixels, hr_img.pixels))
    result = ValidationResult(_finite_mean(sr_scores), _finite_mean(bic_scores), len(pairs), grid_written)
    log.info(
        "validation on %d images: PSNR_Y %.3f dB (bicubic %.3f dB, gain %+.3f dB)",
        result.n_images,
        result.psnr_y,
        result.psnr_y_bicubic,
        result.gain_db,
    )
    return result
