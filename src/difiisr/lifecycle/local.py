"""The embedded defaults of a local pipeline run: everything ``python pipelines/train_eval.py`` needs, under one
folder, with no setup.

Under ``root`` (``outputs/demo`` for ``make demo``):

- ``data-repo/``: a git + DVC repository whose ``data/hr`` (``train/`` and ``test/`` synthetic thermal frames)
  is versioned, pushed to ``dvc-remote/`` and committed; created only when it does not exist yet, so a second
  run trains on the same data version;
- ``mlflow.db`` (SQLite tracking store and registry) and ``mlartifacts/`` (run artifacts), unless
  ``MLFLOW_TRACKING_URI`` already points somewhere;
- ``batch/incoming/``: a few synthetic LR frames for the batch-upscaling step, which writes ``batch/upscaled/``;
- ``work/`` (training checkpoints, resumable) and ``kfp/`` (the KFP local runner's artifacts).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

DATASET_PATH = "data/hr"


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    """Sizes and seeds of the synthetic data a fresh local run creates (frames are square, ``size`` pixels)."""

    n_train: int = 16
    n_test: int = 4
    size: int = 256
    bit_depth: int = 8
    seed_train: int = 0
    seed_test: int = 1000
    # LR frames for batch upscaling
    n_incoming: int = 4
    incoming_size: int = 64
    seed_incoming: int = 2000


@dataclasses.dataclass(frozen=True)
class LocalSetup:
    """Where a local run keeps its data, tracking, work and outputs (all under ``root``)."""

    root: Path
    tracking_uri: str
    experiment: str
    data_repo: Path
    dataset_path: str
    dvc_remote: Path
    batch_input: Path
    batch_output: Path
    work_root: Path
    pipeline_root: Path


def _ensure_experiment(tracking_uri: str, experiment: str, artifacts: Path) -> None:
    """Create ``experiment`` with its artifacts under ``artifacts`` (a local store), unless it exists."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if client.get_experiment_by_name(experiment) is None:
        artifacts.mkdir(parents=True, exist_ok=True)
        client.create_experiment(experiment, artifact_location=artifacts.resolve().as_uri())


def _ensure_dataset(repo: Path, remote: Path, data: SyntheticData) -> None:
    """Create and version the synthetic HR dataset in ``repo`` unless ``DATASET_PATH`` is versioned there."""
    from difiisr.data.synthetic import generate_dataset
    from difiisr.data.versioning import track

    if (repo / f"{DATASET_PATH}.dvc").is_file():
        log.info("local data: %s/%s is already versioned; reusing it", repo, DATASET_PATH)
        return
    hr = repo / DATASET_PATH
    size = (data.size, data.size)
    generate_dataset(hr / "train", data.n_train, size, data.bit_depth, data.seed_train, progress=False)
    generate_dataset(hr / "test", data.n_test, size, data.bit_depth, data.seed_test, progress=False)
    (version,) = track(repo, [DATASET_PATH], str(remote.resolve()), message="data: synthetic thermal frames")
    log.info("local data: synthetic %s versioned at %s (md5 %s)", DATASET_PATH, version.rev, version.md5)


def prepare_local(
    root: str | Path, *, experiment: str = "difiisr", data: SyntheticData | None = None
) -> LocalSetup:
    """Create what is missing under ``root`` (data repository, MLflow store, batch inputs); returns the layout.

    ``tracking_uri`` is ``MLFLOW_TRACKING_URI`` when set, else the SQLite store under ``root``; the caller exports
    it, so that every step of the run (a subprocess) uses the same store.
    """
    from difiisr.data.synthetic import generate_dataset

    data = data or SyntheticData()
    base = Path(root).resolve()
    base.mkdir(parents=True, exist_ok=True)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{base / 'mlflow.db'}"
    if uri.startswith("sqlite:"):
        _ensure_experiment(uri, experiment, base / "mlartifacts")
    setup = LocalSetup(
        root=base,
        tracking_uri=uri,
        experiment=experiment,
        data_repo=base / "data-repo",
        dataset_path=DATASET_PATH,
        dvc_remote=base / "dvc-remote",
        batch_input=base / "batch" / "incoming",
        batch_output=base / "batch" / "upscaled",
        work_root=base / "work",
        pipeline_root=base / "kfp",
    )
    _ensure_dataset(setup.data_repo, setup.dvc_remote, data)
    size = (data.incoming_size, data.incoming_size)
    generate_dataset(
        setup.batch_input, data.n_incoming, size, data.bit_depth, data.seed_incoming, progress=False
    )
    return setup
