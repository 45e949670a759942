"""Evaluation: PSNR/SSIM (BT.601 Y and direct), NIQE, LPIPS from local weights; reports; MLflow logging."""

from difiisr.data.pairs import PairsError, dataset_md5, list_pairs
from difiisr.evaluation.baseline import bicubic_upscale
from difiisr.evaluation.evaluate import (
    EvaluationError,
    EvaluationResult,
    evaluate_pairs,
    image_metrics,
    log_to_mlflow,
    mlflow_metrics,
)
from difiisr.evaluation.metrics import (
    METRIC_CONVENTIONS,
    MetricInputError,
    niqe,
    psnr,
    psnr_y,
    rgb_to_y,
    ssim,
    ssim_y,
)
from difiisr.evaluation.model_source import InferenceSettings, ModelSourceError, load_upscale_fn

__all__ = [
    "METRIC_CONVENTIONS",
    "EvaluationError",
    "EvaluationResult",
    "InferenceSettings",
    "MetricInputError",
    "ModelSourceError",
    "PairsError",
    "bicubic_upscale",
    "dataset_md5",
    "evaluate_pairs",
    "image_metrics",
    "list_pairs",
    "load_upscale_fn",
    "log_to_mlflow",
    "mlflow_metrics",
    "niqe",
    "psnr",
    "psnr_y",
    "rgb_to_y",
    "ssim",
    "ssim_y",
]
