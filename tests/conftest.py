"""Shared pytest configuration. Service fixtures (SeaweedFS, MLflow) live in tests/services.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# infra/local/stack.py is the single implementation of the local service stack; fixtures reuse it.
sys.path.insert(0, str(ROOT / "infra" / "local"))
sys.path.insert(0, str(ROOT / "tests"))

# Real local services (SeaweedFS S3, MLflow tracking server) as session fixtures: tests/services.py.
pytest_plugins = ["services"]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return ROOT


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly when no CUDA device is present (always the case in CI)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
