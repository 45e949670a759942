"""Turn ``evaluate --model REF`` into an upscale function ``LR pixels -> x4 SR pixels``.

The reference is resolved by ``difiisr.registry.resolve`` (the same resolver ``upscale`` and the batch job use),
and the model runs through the same engine as ``difiisr upscale``: ``Upscaler.from_folder`` with the given
``InferenceSettings``, so an evaluation's SR images are byte-identical to what ``upscale`` writes with the same
settings. A registered model (an MLflow pyfunc) is evaluated the same way, through the model folder inside it;
``via_pyfunc=True`` instead calls ``mlflow.pyfunc`` (8-bit only), to check the served model itself; an MLflow model
with no difiisr model folder inside (any pyfunc following the contract) can only be evaluated that way.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from difiisr.errors import DifiisrError
from difiisr.inference.settings import InferenceSettings

log = logging.getLogger(__name__)

UpscaleFn = Callable[[np.ndarray], np.ndarray]


class ModelSourceError(DifiisrError, ValueError):
    """The model cannot be evaluated as asked (e.g. 16-bit pairs through the 8-bit pyfunc); the message says why."""


def folder_upscale_fn(
    model_dir: str | Path, settings: InferenceSettings, device: str = "auto"
) -> tuple[UpscaleFn, Any]:
    """Upscale function of a model folder (``Upscaler.from_folder``) and the upscaler itself."""
    from difiisr.inference import Upscaler

    upscaler = Upscaler.from_folder(model_dir, device=device)
    upscaler.check(settings)

    def upscale(lr: np.ndarray) -> np.ndarray:
        return upscaler.upscale_array(lr, settings)

    return upscale, upscaler


def _pyfunc_input_rank(model: Any) -> int | None:
    """3 for a grey ``(N,H,W)`` signature, 4 for RGB ``(N,H,W,3)``, None when the model declares no tensor shape."""
    try:
        schema = model.metadata.get_input_schema()
        shape = schema.inputs[0].shape if schema is not None else None
    except (AttributeError, IndexError):
        return None
    return len(shape) if shape is not None else None


def pyfunc_upscale_fn(model: Any, settings: InferenceSettings) -> UpscaleFn:
    """Adapter: an MLflow pyfunc upscaler (uint8 batch in, uint8 batch out) as ``LR pixels -> x4 pixels``.

    Grey/RGB are converted to what the model's signature declares and the output back to the LR's form
    (RGB -> grey by channel mean, grey -> RGB by replication). 16-bit LR images are refused: the pyfunc is 8-bit.
    """
    rank = _pyfunc_input_rank(model)
    params = settings.to_params()

    def upscale(lr: np.ndarray) -> np.ndarray:
        if lr.dtype != np.uint8:
            raise ModelSourceError(
                f"the MLflow pyfunc model takes uint8 images, got {lr.dtype}; evaluate 16-bit pairs without "
                "--via-pyfunc (the model folder inside the registered model is used then)"
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
    ref: str,
    settings: InferenceSettings,
    workdir: str | Path,
    *,
    device: str = "auto",
    via_pyfunc: bool = False,
) -> tuple[UpscaleFn, dict[str, Any]]:
    """Upscale function for ``--model ref`` plus what to record about it (reference, version, digest, settings)."""
    from difiisr.registry.resolve import resolve_model

    resolved = resolve_model(ref, workdir)
    meta: dict[str, Any] = {
        "model": ref,
        "model_uri": resolved.uri or ref,
        "model_version": resolved.version,
        "model_kind": resolved.kind,
        "settings": dataclasses.asdict(settings),
        "settings_digest": settings.digest(),
    }
    if resolved.folder is None:
        log.info("%s holds no difiisr model folder: evaluating it through mlflow.pyfunc", ref)
        via_pyfunc = True
    if via_pyfunc:
        if resolved.pyfunc_dir is None:
            raise ModelSourceError(
                f"--via-pyfunc: {ref} is a model folder, not an MLflow model; register it first or drop the flag"
            )
        import mlflow.pyfunc

        fn = pyfunc_upscale_fn(mlflow.pyfunc.load_model(str(resolved.pyfunc_dir)), settings)
        meta["path"] = "pyfunc"
    else:
        fn, upscaler = folder_upscale_fn(resolved.require_folder(), settings, device)
        meta.update({"path": "upscaler", "model_digest": upscaler.digest})
    log.info("loaded %s model from %s", resolved.kind, resolved.describe())
    return fn, meta


__all__ = ["ModelSourceError", "folder_upscale_fn", "load_upscale_fn", "pyfunc_upscale_fn"]
