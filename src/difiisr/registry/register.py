"""Register a trained (and evaluated) MLflow run as a new version of the registered model.

The run must hold the exported model folder as artifacts (``model_folder/``, written by ``difiisr train``) and
the evaluation results (metrics ``eval/<metric>`` and ``eval/bicubic_<metric>`` and tag ``eval_md5``, written by
``difiisr evaluate``). The new version gets the alias ``challenger`` and tags that make it traceable: dataset md5,
evaluation md5, every evaluation metric, config hash, code version and preset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from difiisr.registry.names import (
    ALIAS_CHALLENGER,
    ARTIFACT_MODEL_FOLDER,
    EVAL_METRIC_PREFIX,
    METRIC_TAG_PREFIX,
    RUN_TAG_CODE_VERSION,
    RUN_TAG_DATASET_MD5,
    RUN_TAG_EVAL_MD5,
    TAG_CODE_VERSION,
    TAG_CONFIG_HASH,
    TAG_DATASET_MD5,
    TAG_EVAL_MD5,
    TAG_PRESET,
    TAG_RUN_ID,
    RegistryError,
)

log = logging.getLogger(__name__)


def config_hash(preset_mapping: dict[str, Any]) -> str:
    """sha256 (hex, first 16) of a preset mapping in canonical JSON form."""
    blob = json.dumps(preset_mapping, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _same_registration(
    client: Any, name: str, run_id: str, eval_md5: str, metric_tags: dict[str, str]
) -> Any:
    """The version of ``name`` already registered from ``run_id`` with the same evaluation, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    except MlflowException:
        return None
    for mv in versions:
        tags = mv.tags
        if tags.get(TAG_EVAL_MD5) == eval_md5 and all(tags.get(k) == v for k, v in metric_tags.items()):
            return mv
    return None


def register_run(
    run_id: str,
    name: str,
    *,
    channels: int = 1,
    artifact_path: str = ARTIFACT_MODEL_FOLDER,
    client: Any | None = None,
) -> Any:
    """Log the run's model folder as a pyfunc model, register it under ``name`` and alias it ``challenger``.

    Returns the new ``ModelVersion``. Raises ``RegistryError`` naming the run when it has no model folder or has not
    been evaluated.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from difiisr.models.bundle import read_model_yaml
    from difiisr.registry.pyfunc import log_upscaler_model

    c = client or MlflowClient()
    try:
        run = c.get_run(run_id)
    except MlflowException as exc:
        raise RegistryError(
            f"run {run_id!r} not found at {mlflow.get_tracking_uri()}: {exc.message}"
        ) from None
    metrics = run.data.metrics
    eval_metrics = {
        k[len(EVAL_METRIC_PREFIX) :]: v for k, v in metrics.items() if k.startswith(EVAL_METRIC_PREFIX)
    }
    eval_md5 = run.data.tags.get(RUN_TAG_EVAL_MD5)
    if not eval_metrics or not eval_md5:
        raise RegistryError(
            f"run {run_id} has not been evaluated (no '{EVAL_METRIC_PREFIX}*' metrics or '{RUN_TAG_EVAL_MD5}' tag); "
            f"run 'difiisr evaluate --model runs:/{run_id}/{artifact_path} --pairs DIR --out DIR --run-id {run_id}' first"
        )
    metric_tags = {f"{METRIC_TAG_PREFIX}{k}": repr(float(v)) for k, v in eval_metrics.items()}
    existing = _same_registration(c, name, run_id, eval_md5, metric_tags)
    if existing is not None:  # a rerun of the same step: reuse the version instead of registering a copy
        c.set_registered_model_alias(name, ALIAS_CHALLENGER, existing.version)
        log.info("%s v%s already registers run %s with these results; alias '%s' set", name, existing.version,
                 run_id, ALIAS_CHALLENGER)  # fmt: skip
        return c.get_model_version(name, existing.version)
    with tempfile.TemporaryDirectory(prefix="difiisr-register-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact_path, dst_path=tmp
            )
        except (MlflowException, OSError) as exc:
            raise RegistryError(
                f"run {run_id} has no model folder at artifact path '{artifact_path}' ({exc}); "
                "train with 'difiisr train' (it logs the folder) or pass --artifact-path"
            ) from None
        preset, _ = read_model_yaml(local)
        with mlflow.start_run(run_id=run_id):
            info = log_upscaler_model(Path(local), channels=channels)
    mv = mlflow.register_model(info.model_uri, name)
    tags = {
        TAG_EVAL_MD5: eval_md5,
        TAG_DATASET_MD5: run.data.tags.get(RUN_TAG_DATASET_MD5, ""),
        TAG_CODE_VERSION: run.data.tags.get(RUN_TAG_CODE_VERSION, ""),
        TAG_CONFIG_HASH: config_hash(preset.to_dict()),
        TAG_PRESET: preset.name,
        TAG_RUN_ID: run_id,
    }
    tags.update(metric_tags)
    for key, value in tags.items():
        c.set_model_version_tag(name, mv.version, key, value)
    c.set_registered_model_alias(name, ALIAS_CHALLENGER, mv.version)
    log.info("registered %s v%s from run %s as '%s'", name, mv.version, run_id, ALIAS_CHALLENGER)
    return c.get_model_version(name, mv.version)
