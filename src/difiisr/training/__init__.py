"""Diffusion training: typed config, resumable Accelerate loop, EMA, checkpoints, MLflow tracking.

``train(load_train_config("train_tiny", ["data.train_dir=pairs/"]))`` trains and exports a model folder.
"""

from difiisr.data.fingerprint import dataset_md5
from difiisr.training.checkpointing import EXIT_PREEMPTED, ResumeError, latest_checkpoint
from difiisr.training.config import (
    DataConfig,
    MlflowConfig,
    ModelSpec,
    OptimConfig,
    TrainConfig,
    ValidationConfig,
    load_train_config,
)
from difiisr.training.ema import EMA
from difiisr.training.loop import TrainResult, train
from difiisr.training.setup import TrainError

__all__ = [
    "EMA",
    "EXIT_PREEMPTED",
    "DataConfig",
    "MlflowConfig",
    "ModelSpec",
    "OptimConfig",
    "ResumeError",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "ValidationConfig",
    "dataset_md5",
    "latest_checkpoint",
    "load_train_config",
    "train",
]
