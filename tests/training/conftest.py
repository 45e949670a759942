"""Fixtures for the training tests: tiny synthetic pairs folders and a small, fast training config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difiisr.data.synthetic import generate_scene
from difiisr.training.config import (
    DataConfig,
    MlflowConfig,
    ModelSpec,
    OptimConfig,
    TrainConfig,
    ValidationConfig,
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run in-process training on one intra-op thread: on a small shared machine, 2+ OpenMP threads that
    compete with other processes slow a step down many times (subprocess tests set OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_pairs(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` synthetic thermal HR frames of ``size``^2 and their PIL-bicubic /4 LR, in the pairs layout."""
    for side in ("hr", "lr"):
        (root / side).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        hr = generate_scene(size, size, seed=seed + k)
        lr = np.asarray(Image.fromarray(hr).resize((size // 4, size // 4), Image.Resampling.BICUBIC))
        Image.fromarray(hr).save(root / "hr" / f"im{k:03d}.png")
        Image.fromarray(lr).save(root / "lr" / f"im{k:03d}.png")
    return root


@pytest.fixture(scope="session")
def train_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 pairs, HR 96x96 (LR 24x24): room for random 64x64 crops."""
    return write_pairs(tmp_path_factory.mktemp("train_pairs"), 8, 96, seed=0)


@pytest.fixture(scope="session")
def val_pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 held-out pairs, HR 64x64 (LR 16x16)."""
    return write_pairs(tmp_path_factory.mktemp("val_pairs"), 2, 64, seed=100)


def _tiny_config(out_dir: Path, train_dir: Path, **changes: object) -> TrainConfig:
    """A training config for the tiny preset that runs a step in well under a second on CPU."""
    cfg = TrainConfig(
        model=ModelSpec(preset="tiny"),
        data=DataConfig(mode="paired", train_dir=str(train_dir), gt_size=64, batch_size=4, workers=0),
        optim=OptimConfig(lr=1e-3, warmup_steps=2, schedule="cosine", min_lr=1e-4, grad_clip=1.0),
        ema_decay=0.9,
        max_steps=6,
        log_every=1,
        save_every=100,
        keep_checkpoints=2,
        seed=7,
        out_dir=str(out_dir),
        mlflow=MlflowConfig(enabled=False),
        validation=ValidationConfig(dir=None, n_images=1, sampler="onestep"),
    )
    return dataclasses.replace(cfg, **changes)


@pytest.fixture
def tiny_config():
    """Factory ``tiny_config(out_dir, train_dir, **field_changes) -> TrainConfig`` (tiny preset, 64x64, batch 4)."""
    return _tiny_config


@pytest.fixture
def make_pairs():
    """Factory ``make_pairs(root, n, size, seed=0) -> root``: synthetic pairs in the pairs layout."""
    return write_pairs
