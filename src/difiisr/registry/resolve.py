"""The one model resolver: a path or MLflow URI -> a local difiisr model folder, classified and identified.

Accepted references:

- a local model folder (``model.yaml`` + safetensors, written by ``difiisr train``);
- a local MLflow model folder (``MLmodel``) logged by ``difiisr register`` (its ``model_dir`` artifact is the
  model folder);
- ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` (a registered version; an alias is resolved to its version
  first, so the files and the recorded version always agree), ``runs:/RUN_ID/model_folder`` (what training
  logs), or any other artifact URI MLflow can download (``mlflow-artifacts:/``, ``s3://``, ...).

URIs use ``MLFLOW_TRACKING_URI``. ``evaluate``, ``upscale``, the batch job and the pipelines all resolve models
here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

from difiisr.errors import DifiisrError
from difiisr.registry.names import PYFUNC_ARTIFACT_KEY

URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "file:/", "http://", "https://")
_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")
_RUN_URI = re.compile(r"^runs:/(?P<run>[^/]+)(/.*)?$")


class ModelReferenceError(DifiisrError, ValueError):
    """A model reference names nothing loadable; the message says what was found and what is accepted."""


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """Where a model reference led.

    ``folder``: the local difiisr model folder (None for an MLflow model that holds none: a foreign pyfunc that
    only ``evaluate`` can run, through mlflow.pyfunc). ``kind``: ``folder`` (the reference was a model folder) or
    ``pyfunc`` (an MLflow model; ``pyfunc_dir`` is its local folder). ``version``: ``NAME/VERSION`` for registry
    references. ``run_id``: the MLflow run for ``runs:/`` references and registered versions. ``uri``: the
    reference pinned to what was loaded (``models:/NAME/VERSION`` for an alias).
    """

    ref: str
    folder: Path | None
    kind: Literal["folder", "pyfunc"]
    pyfunc_dir: Path | None = None
    version: str | None = None
    run_id: str | None = None
    uri: str | None = None

    def require_folder(self) -> Path:
        """The difiisr model folder, or ``ModelReferenceError`` for a foreign MLflow model."""
        if self.folder is None:
            raise ModelReferenceError(
                f"{self.ref}: an MLflow model without a difiisr model folder inside (not logged by 'difiisr "
                "register'); only 'difiisr evaluate' can run it, through mlflow.pyfunc"
            )
        return self.folder

    def describe(self) -> str:
        """Human form: the reference and, when it differs, what it resolved to."""
        pinned = self.uri or self.ref
        return self.ref if pinned == self.ref else f"{self.ref} ({pinned})"


def model_folder_in(root: Path, ref: str) -> tuple[Path | None, Literal["folder", "pyfunc"]]:
    """The difiisr model folder at or inside ``root`` (None inside a foreign MLflow model) and the kind of
    ``root``; anything else raises ``ModelReferenceError``."""
    if (root / "MLmodel").is_file():
        direct = root / "artifacts" / PYFUNC_ARTIFACT_KEY
        found = (
            [direct]
            if (direct / "model.yaml").is_file()
            else sorted(p.parent for p in root.rglob("model.yaml"))
        )
        if len(found) <= 1:
            return (found[0] if found else None), "pyfunc"
        raise ModelReferenceError(
            f"{ref}: an MLflow model, but {len(found)} difiisr model folders inside it (expected one); "
            "was it logged by 'difiisr register'?"
        )
    if (root / "model.yaml").is_file():
        return root, "folder"
    raise ModelReferenceError(
        f"{ref}: neither a model folder (model.yaml + unet.safetensors) nor an MLflow model (MLmodel); pass the "
        "folder written by 'difiisr train' or a URI such as models:/difiisr-x4@champion"
    )


def _pin(ref: str) -> tuple[str, str | None, str | None]:
    """``(uri to download, NAME/VERSION or None, run id or None)``; aliases are resolved to their version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    alias, version, run = _ALIAS_URI.match(ref), _VERSION_URI.match(ref), _RUN_URI.match(ref)
    if run:
        return ref, None, run.group("run")
    if not (alias or version):
        return ref, None, None
    client = MlflowClient()
    try:
        if alias:
            mv = client.get_model_version_by_alias(alias.group("name"), alias.group("alias"))
        else:
            assert version is not None
            mv = client.get_model_version(version.group("name"), version.group("version"))
    except MlflowException as exc:
        raise ModelReferenceError(
            f"{ref}: not found in the registry ({exc.message}); check the name and alias/version "
            "(e.g. models:/difiisr-x4@champion) and MLFLOW_TRACKING_URI"
        ) from None
    return f"models:/{mv.name}/{mv.version}", f"{mv.name}/{mv.version}", mv.run_id


def resolve_model(ref: str | Path, workdir: str | Path) -> ResolvedModel:
    """Resolve ``ref`` to a local model folder; URIs are downloaded into ``workdir`` (which must outlive use)."""
    text = str(ref)
    local = Path(text)
    if local.is_dir():
        folder, kind = model_folder_in(local, text)
        return ResolvedModel(text, folder, kind, pyfunc_dir=local if kind == "pyfunc" else None)
    if not text.startswith(URI_PREFIXES):
        raise ModelReferenceError(
            f"{text}: no such folder and not an MLflow URI (models:/NAME@ALIAS, models:/NAME/VERSION, "
            "runs:/RUN_ID/model_folder)"
        )
    import mlflow
    from mlflow.exceptions import MlflowException

    uri, version, run_id = _pin(text)
    try:
        downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(workdir)))
    except (MlflowException, OSError) as exc:
        raise ModelReferenceError(
            f"{text}: cannot download from MLflow at {mlflow.get_tracking_uri()} ({exc}); "
            "check the URI and MLFLOW_TRACKING_URI"
        ) from None
    if not downloaded.is_dir():
        raise ModelReferenceError(f"{text}: names a file, not a model folder or MLflow model")
    folder, kind = model_folder_in(downloaded, text)
    return ResolvedModel(
        text,
        folder,
        kind,
        pyfunc_dir=downloaded if kind == "pyfunc" else None,
        version=version,
        run_id=run_id,
        uri=uri,
    )


def model_folder(ref: str | Path, workdir: str | Path) -> Path:
    """Local difiisr model folder for ``ref`` (see ``resolve_model``)."""
    return resolve_model(ref, workdir).require_folder()


__all__ = [
    "URI_PREFIXES",
    "ModelReferenceError",
    "ResolvedModel",
    "model_folder",
    "model_folder_in",
    "resolve_model",
]
