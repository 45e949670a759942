"""Degradation synthesis: bicubic test protocol, seeded Real-ESRGAN second-order pipeline, pairs folders."""

from difiisr.data.pairs import MANIFEST_NAME, PairsError
from difiisr.degradation.bicubic import bicubic_downsample, bicubic_downsample_tensor
from difiisr.degradation.config import KERNEL_TYPES, RESIZE_MODES, RealESRGANConfig
from difiisr.degradation.crop import CropParams, apply_crop, sample_crop
from difiisr.degradation.pairs import PROTOCOLS, DegradeSummary, SourceFailure, degrade_folder
from difiisr.degradation.params import build_kernel, sample_params
from difiisr.degradation.realesrgan import RealESRGANDegradation
from difiisr.degradation.seeding import derive_seed, image_seeds

__all__ = [
    "KERNEL_TYPES",
    "MANIFEST_NAME",
    "PROTOCOLS",
    "RESIZE_MODES",
    "CropParams",
    "DegradeSummary",
    "PairsError",
    "RealESRGANConfig",
    "RealESRGANDegradation",
    "SourceFailure",
    "apply_crop",
    "bicubic_downsample",
    "bicubic_downsample_tensor",
    "build_kernel",
    "degrade_folder",
    "derive_seed",
    "image_seeds",
    "sample_crop",
    "sample_params",
]
