"""The pipeline's model steps: train (one process, ``accelerate launch`` on N GPUs, or a multi-node TrainJob)
and evaluate against bicubic on the held-out pairs.

Each function is what one Kubeflow component (``components/``) calls. Training logs to its own MLflow run, made
a child of the pipeline run through ``mlflow.parent_run_id``; that run holds the model folder, and evaluation
writes its ``eval/*`` metrics and ``eval_md5`` there too, because ``difiisr register`` reads them from the run
that holds the model. The evaluation also gets a child run of its own with the same figures and reports.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from difiisr.errors import DifiisrError, ExitCode, JobError
from difiisr.lifecycle.data_steps import TEST, TRAIN, require_splits
from difiisr.lifecycle.lineage import mark_step, step_run

log = logging.getLogger(__name__)

STEP_TRAIN = "train"
STEP_EVALUATE = "evaluate"
NAMESPACE_ENV = "POD_NAMESPACE"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
TRAINJOB_TIMEOUT_S = 7 * 24 * 3600  # a multi-node run may take days; the KFP task's own limits still apply


class TrainingPreempted(DifiisrError):
    """Training saved its state and stopped on SIGTERM; the step's retry resumes it from the work folder."""

    exit_code = ExitCode.PREEMPTED


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A finished training run: its MLflow run (which holds the model folder) and the local model folder."""

    run_id: str
    model_dir: Path
    work_dir: Path
    processes: int
    nodes: int

    def metadata(self) -> dict[str, Any]:
        """KFP artifact metadata of the model folder."""
        return {"mlflow_run_id": self.run_id, "processes": self.processes, "nodes": self.nodes}


def resolve_train_config(
    config: str,
    overrides: Sequence[str],
    *,
    pairs_dir: Path,
    out_dir: Path,
    steps: int,
    seed: int,
    experiment: str,
    parent_run_id: str,
) -> Any:
    """The preset ``config`` with ``overrides``, pointed at the pipeline's pairs, work folder and lineage.

    The pipeline's own settings win over ``overrides``; strings (paths, run ids that look like numbers) are set
    on the typed config, not parsed from ``KEY=VALUE`` text. ``steps`` 0 keeps the preset's ``max_steps``.
    """
    from difiisr.training import load_train_config

    numbers = [f"seed={int(seed)}", *([f"max_steps={int(steps)}"] if steps > 0 else [])]
    cfg = load_train_config(config, [*overrides, *numbers])
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, train_dir=str(pairs_dir / TRAIN)),
        validation=dataclasses.replace(cfg.validation, dir=str(pairs_dir / TEST)),
        out_dir=str(out_dir),
        mlflow=dataclasses.replace(
            cfg.mlflow, enabled=True, experiment=experiment, run_name=STEP_TRAIN, parent_run_id=parent_run_id
        ),
    )


def write_train_config(cfg: Any, path: Path) -> Path:
    """Write ``cfg`` as a training YAML (what ``difiisr train --config`` reads on every rank and node)."""
    import yaml

    from difiisr.storage import atomic_write_text

    return atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def accelerate_command(num_processes: int, verb_args: Sequence[str]) -> list[str]:
    """``accelerate launch`` of ``difiisr VERB_ARGS`` with one process per GPU on this machine."""
    if num_processes < 1:
        raise ValueError(f"num_processes={num_processes}: must be >= 1 (one process per GPU)")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1"]
    cmd += ["--num_processes", str(num_processes), "--dynamo_backend", "no"]
    if num_processes > 1:
        cmd.append("--multi_gpu")
    return [*cmd, "-m", "difiisr.cli.main", *verb_args]


def _run_id(out_dir: Path) -> str:
    from difiisr.training.tracking import RUN_RECORD

    record = out_dir / RUN_RECORD
    if not record.is_file():
        raise JobError(f"{record}: missing after training; the training run did not reach MLflow")
    return str(json.loads(record.read_text(encoding="utf-8"))["run_id"])


def _copy_folder(src: Path, dest: Path) -> None:
    """Copy ``src`` to ``dest`` through a temporary sibling, so ``dest`` is never half-written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def _train_here(cfg: Any, config_file: Path, num_gpus: int) -> None:
    """Train on this machine: in this process (CPU or one GPU), else ``accelerate launch`` with one per GPU."""
    if num_gpus <= 1:
        from difiisr.training import train as run_training

        result = run_training(cfg, resume=True)
        if result.status == "preempted":
            raise TrainingPreempted(f"training preempted at step {result.step}; the retry resumes it")
        return
    cmd = accelerate_command(num_gpus, ["train", "--config", str(config_file), "--resume"])
    log.info("launching: %s", " ".join(cmd))
    code = subprocess.run(cmd, check=False).returncode
    if code == ExitCode.PREEMPTED:
        raise TrainingPreempted("training preempted (exit 75); the retry resumes it")
    if code != 0:
        raise JobError(f"`accelerate launch ... difiisr train` exited with {code}; see the log above")


def _namespace() -> str:
    """The Kubernetes namespace of this pod (``POD_NAMESPACE`` from the downward API, else the service account's)."""
    namespace = os.environ.get(NAMESPACE_ENV, "")
    if not namespace and SERVICE_ACCOUNT_NAMESPACE.is_file():
        namespace = SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip()
    if not namespace:
        raise JobError(
            f"num_nodes > 1 submits a Kubeflow TrainJob, which needs the pod's namespace: set {NAMESPACE_ENV} "
            "(the pipeline sets it from metadata.namespace) or run in a pod with a service account"
        )
    return namespace


def _train_on_cluster(config_file: Path, *, name: str, nodes: int, gpus: int, image: str) -> None:
    """Train on ``nodes`` x ``gpus`` with a Kubeflow TrainJob (same image and entry point) and wait for it.

    Every node reads ``config_file`` (and the pairs it names) from the shared work volume; the TrainingRuntime
    supplies the pods' credentials, endpoints, ``/dev/shm`` and that volume.
    """
    from difiisr.training.trainjob import build_trainjob, submit_and_wait

    job = build_trainjob(
        name=name,
        namespace=_namespace(),
        image=image,
        nodes=nodes,
        gpus_per_node=gpus,
        config=str(config_file),
    )
    submit_and_wait(job, timeout=TRAINJOB_TIMEOUT_S)


def train(
    *,
    pairs_dir: str | Path,
    model_dir: str | Path,
    work_root: str | Path,
    config: str,
    steps: int,
    num_gpus: int,
    num_nodes: int,
    seed: int,
    experiment: str,
    parent_run_id: str,
    kfp_run_id: str,
    image: str,
    overrides: Sequence[str] = (),
) -> TrainedModel:
    """Train the preset ``config`` on ``pairs_dir/train`` and copy the exported model folder to ``model_dir``.

    The work folder ``work_root/KFP_RUN_ID`` keeps the resolved config and ``train/`` (checkpoints), so a retried
    (preempted) step resumes there; on a cluster it lives on the shared volume. ``num_nodes > 1`` runs a
    Kubeflow TrainJob of ``num_nodes`` x ``num_gpus`` ranks in ``image`` (the pairs are copied to the work folder
    first, since every node reads them there); else this machine trains with ``num_gpus`` processes (one
    process on CPU when 0). ``steps`` 0 keeps the preset's ``max_steps``; ``overrides`` are more ``KEY=VALUE``
    settings of the preset.
    """
    pairs = require_splits(pairs_dir, "pairs dataset")
    run_dir = Path(work_root) / re.sub(r"[^A-Za-z0-9_.-]", "_", kfp_run_id)
    work = run_dir / STEP_TRAIN
    if num_nodes > 1 and not (run_dir / "pairs").is_dir():
        _copy_folder(pairs, run_dir / "pairs")
    cfg = resolve_train_config(
        config,
        overrides,
        pairs_dir=run_dir / "pairs" if num_nodes > 1 else pairs,
        out_dir=work,
        steps=steps,
        seed=seed,
        experiment=experiment,
        parent_run_id=parent_run_id,
    )
    config_file = write_train_config(cfg, run_dir / "train_config.yaml")
    if num_nodes > 1:
        name = "difiisr-train-" + re.sub(r"[^a-z0-9-]", "-", run_dir.name.lower())[-40:].strip("-")
        _train_on_cluster(config_file, name=name, nodes=num_nodes, gpus=num_gpus, image=image)
    else:
        _train_here(cfg, config_file, num_gpus)
    from difiisr.training.loop import MODEL_DIR

    run_id = _run_id(work)
    mark_step(run_id, parent_run_id, STEP_TRAIN)
    _copy_folder(work / MODEL_DIR, Path(model_dir))
    processes = max(1, num_gpus) * max(1, num_nodes)
    log.info("trained %s (%d process(es)); model folder -> %s", run_id, processes, model_dir)
    return TrainedModel(run_id, Path(model_dir), work, processes, max(1, num_nodes))


def _finite(means: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in means.items() if math.isfinite(v)}


@dataclasses.dataclass(frozen=True)
class EvaluationOutcome:
    """Model and bicubic means on the held-out pairs (finite ones: NIQE is NaN on tiny frames), the evaluation
    set's md5 and the report files."""

    model: dict[str, float]
    bicubic: dict[str, float]
    eval_md5: str
    n_images: int
    report_html: Path
    folder: Path
    run_id: str


def evaluate(
    *,
    model_dir: str | Path,
    pairs_dir: str | Path,
    out_dir: str | Path,
    model_run_id: str,
    parent_run_id: str,
    inference: Mapping[str, Any],
    device: str = "auto",
) -> EvaluationOutcome:
    """Evaluate the model folder on ``pairs_dir/test`` against bicubic; reports in ``out_dir``; log to MLflow.

    The results go to the training run ``model_run_id`` (``difiisr register`` reads them there) and to this
    step's child run.
    """
    from difiisr.evaluation.evaluate import BICUBIC, evaluate_pairs, log_to_mlflow
    from difiisr.evaluation.model_source import load_upscale_fn
    from difiisr.inference.settings import InferenceSettings

    pairs = require_splits(pairs_dir, "pairs dataset")
    settings = InferenceSettings.from_params(dict(inference))
    with step_run(parent_run_id, STEP_EVALUATE) as run:
        run.log_params({**settings.to_record(), "device": device})
        with tempfile.TemporaryDirectory(prefix="difiisr-evaluate-") as workdir:
            upscale, meta = load_upscale_fn(str(model_dir), settings, workdir, device=device)
            meta = {**meta, "mlflow_run_id": model_run_id}
            result = evaluate_pairs(upscale, pairs / TEST, out_dir, name="model", progress=False, meta=meta)
        log_to_mlflow(result, run_id=model_run_id)
        log_to_mlflow(result, run_id=run.run_id)
    return EvaluationOutcome(
        model=_finite(result.model_means),
        bicubic=_finite(result.means[BICUBIC]),
        eval_md5=result.dataset_md5,
        n_images=result.n_images,
        report_html=result.html_path,
        folder=Path(out_dir),
        run_id=run.run_id,
    )
