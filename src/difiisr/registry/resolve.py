"""Find the difiisr model folder behind a path or an MLflow URI.

Accepted: a local model folder; a local MLflow model folder (``MLmodel``) logged by ``log_upscaler_model``;
``runs:/RUN_ID/model_folder`` (what training logs); ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (a
registered pyfunc, whose ``model_dir`` artifact is the model folder); any other artifact URI MLflow can download.
"""

from __future__ import annotations

from pathlib import Path

URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "file:/", "http://", "https://")


class ModelReferenceError(ValueError):
    """A model reference names nothing loadable; the message says what was found and what is accepted."""


def _folder_in(root: Path, ref: str) -> Path:
    if (root / "model.yaml").is_file():
        return root
    if (root / "MLmodel").is_file():
        found = sorted(p.parent for p in (root / "artifacts").rglob("model.yaml"))
        if len(found) == 1:
            return found[0]
        raise ModelReferenceError(
            f"{ref}: an MLflow model, but {len(found)} difiisr model folders inside its artifacts (expected one); "
            "was it logged by 'difiisr register'?"
        )
    raise ModelReferenceError(
        f"{ref}: neither a model folder (model.yaml + unet.safetensors) nor an MLflow model (MLmodel); pass the "
        "folder written by 'difiisr train' or a URI such as models:/difiisr-x4@champion"
    )


def model_folder(ref: str | Path, workdir: str | Path) -> Path:
    """Local model folder for ``ref``; URIs are downloaded into ``workdir`` (uses ``MLFLOW_TRACKING_URI``)."""
    text = str(ref)
    local = Path(text)
    if local.is_dir():
        return _folder_in(local, text)
    if not text.startswith(URI_PREFIXES):
        raise ModelReferenceError(
            f"{text}: no such folder and not an MLflow URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/PATH)"
        )
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=str(workdir)))
    except (MlflowException, OSError) as exc:
        raise ModelReferenceError(
            f"{text}: cannot download from MLflow at {mlflow.get_tracking_uri()} ({exc}); "
            "check the URI and MLFLOW_TRACKING_URI"
        ) from None
    if not downloaded.is_dir():
        raise ModelReferenceError(f"{text}: names a file, not a model folder or MLflow model")
    return _folder_in(downloaded, text)
