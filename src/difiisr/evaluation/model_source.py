"""Turn ``--model`` (a model folder, a saved MLflow pyfunc folder, or an MLflow URI) into an upscale function.

- A local *model folder* (``model.yaml`` + safetensors) is loaded with ``difiisr.inference.Upscaler.from_folder``.
- A local folder with an ``MLmodel`` file is loaded with ``mlflow.pyfunc.load_model``.
- A URI (``models:/NAME@alias``, ``models:/NAME/3``, ``runs:/RUN_ID/PATH``, ``s3://...``) is downloaded with
  ``mlflow.artifacts.download_artifacts`` and then treated as one of the two folders above (a training run's
  ``model_folder`` artifact is a model folder; a registered model version is a pyfunc).

The pyfunc contract (registry): input uint8 ``(N,H,W)`` or ``(N,H,W,3)``, output uint8 of the same form x4,
inference settings in ``params`` (``sampler``, ``steps`` (0 = preset's), ``seed``, ``tile`` (0 = none)).
``pyfunc_upscale_fn`` is the one adapter between that contract and ``evaluate_pairs``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

URI_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/", "s3://", "file:/", "http://", "https://")


class ModelSourceError(ValueError):
    """``--model`` is neither a model folder, a pyfunc folder nor a loadable MLflow URI; the message says why."""


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """How the model upscales during evaluation (recorded in the report)."""

    sampler: str = "onestep"
    steps: int | None = None
    seed: int = 0
    tile: int | None = None
    device: str = "auto"

    def pyfunc_params(self) -> dict[str, Any]:
        """The same settings as MLflow pyfunc ``params`` (0 means "preset default"/"no tiling")."""
        return {"sampler": self.sampler, "steps": self.steps or 0, "seed": self.seed, "tile": self.tile or 0}


def classify_folder(folder: Path) -> Literal["folder", "pyfunc"]:
    """``"folder"`` for a difiisr model folder (``model.yaml``), ``"pyfunc"`` for an MLflow model (``MLmodel``)."""
    if (folder / "MLmodel").is_file():
        return "pyfunc"
    if (folder / "model.yaml").is_file():
        return "folder"
    raise ModelSourceError(
        f"{folder}: neither a model folder (model.yaml + unet.safetensors) nor an MLflow model (MLmodel); "
        "pass the folder written by 'difiisr train' or an MLflow URI such as models:/difiisr-x4@champion"
    )


def resolve_model(ref: str, workdir: str | Path) -> tuple[Literal["folder", "pyfunc"], Path]:
    """Local folder for ``ref`` (downloading URIs into ``workdir``) and its kind."""
    local = Path(ref)
    if local.is_dir():
        return classify_folder(local), local
    if not ref.startswith(URI_PREFIXES):
        raise ModelSourceError(
            f"--model {ref!r}: no such folder and not an MLflow URI (models:/NAME@ALIAS, runs:/RUN_ID/PATH)"
        )
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref, dst_path=str(workdir)))
    except (MlflowException, OSError) as exc:
        raise ModelSourceError(
            f"--model {ref!r}: cannot download from MLflow at {mlflow.get_tracking_uri()} ({exc}); "
            "check the URI and MLFLOW_TRACKING_URI"
        ) from None
    if not downloaded.is_dir():
        raise ModelSourceError(f"--model {ref!r}: the URI names a file, not a model folder or MLflow model")
    return classify_folder(downloaded), downloaded


def folder_upscale_fn(
    model_dir: str | Path, settings: InferenceSettings
) -> Callable[[np.ndarray], np.ndarray]:
    """Upscale function of a model folder via ``Upscaler.from_folder`` (LR pixels -> x4 pixels, same dtype/form)."""
    from difiisr.inference import Upscaler

    upscaler = Upscaler.from_folder(model_dir, device=settings.device)

    def upscale(lr: np.ndarray) -> np.ndarray:
        return upscaler.upscale_array(
            lr, sampler=settings.sampler, steps=settings.steps, seed=settings.seed, tile=settings.tile
        )

    return upscale


def _pyfunc_input_rank(model: Any) -> int | None:
    """3 for a grey ``(N,H,W)`` signature, 4 for RGB ``(N,H,W,3)``, None when the model declares no tensor shape."""
    try:
        schema = model.metadata.get_input_schema()
        shape = schema.inputs[0].shape if schema is not None else None
    except (AttributeError, IndexError):
        return None
    return len(shape) if shape is not None else None


def pyfunc_upscale_fn(model: Any, settings: InferenceSettings) -> Callable[[np.ndarray], np.ndarray]:
    """Adapter: an MLflow pyfunc upscaler (uint8 batch in, uint8 batch out) as ``LR pixels -> x4 pixels``.

    Grey/RGB are converted to what the model's signature declares and the output back to the LR's form
    (RGB -> grey by channel mean, grey -> RGB by replication). 16-bit LR images are refused: the pyfunc is 8-bit.
    """
    rank = _pyfunc_input_rank(model)
    params = settings.pyfunc_params()

    def upscale(lr: np.ndarray) -> np.ndarray:
        if lr.dtype != np.uint8:
            raise ModelSourceError(
                f"the MLflow pyfunc model takes uint8 images, got {lr.dtype}; evaluate 16-bit pairs with the "
                "model folder instead (--model DIR or runs:/RUN_ID/model_folder)"
            )
        x = lr
        if rank == 3 and x.ndim == 3:
            x = np.rint(x.mean(axis=2)).astype(np.uint8)
        elif rank == 4 and x.ndim == 2:
            x = np.repeat(x[..., None], 3, axis=2)
        out = np.asarray(model.predict(x[None], params=params))[0]
        if lr.ndim == 2 and out.ndim == 3:
            out = np.rint(out.mean(axis=2))
        elif lr.ndim == 3 and out.ndim == 2:
            out = np.repeat(out[..., None], 3, axis=2)
        return np.clip(out, 0, 255).astype(np.uint8)

    return upscale


def load_upscale_fn(
    ref: str, settings: InferenceSettings, workdir: str | Path
) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """Upscale function for ``--model ref`` plus what to record about it (kind, source, settings)."""
    kind, local = resolve_model(ref, workdir)
    if kind == "folder":
        fn = folder_upscale_fn(local, settings)
    else:
        import mlflow.pyfunc

        fn = pyfunc_upscale_fn(mlflow.pyfunc.load_model(str(local)), settings)
    log.info("loaded %s model from %s", kind, ref)
    return fn, {"model": ref, "model_kind": kind, **dataclasses.asdict(settings)}
