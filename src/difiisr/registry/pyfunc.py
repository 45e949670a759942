"""``UpscalerPyfunc``: the difiisr Upscaler as an MLflow pyfunc model.

Input: ``uint8`` array ``(N,H,W)`` (grey, the infrared default) or ``(N,H,W,3)`` (RGB), one signature per
registered model (``channels`` at logging time). Output: ``uint8`` of the same form, x4 in H and W.
Inference parameters travel in ``params``: the fields of ``difiisr.inference.settings.InferenceSettings`` with its
defaults (``sampler``, ``steps`` (0 = the preset's), ``seed``, ``tile`` (0 = no tiling), ``tile_overlap``,
``batch``, ``precision``). The serving device comes from the ``DIFIISR_DEVICE`` environment variable (``auto``,
``cpu``, ``cuda``, ``cuda:N``; default ``auto``), which ``difiisr serve --device`` sets.

The model is logged "from code" (``model_code.py``), so nothing is pickled: loading needs ``difiisr`` installed.
The weights travel as the model-folder artifact ``model_dir`` (safetensors + model.yaml).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from difiisr.inference.settings import InferenceSettings
from difiisr.registry.names import ARTIFACT_PYFUNC_MODEL, PYFUNC_ARTIFACT_KEY

MODEL_CODE = Path(__file__).with_name("model_code.py")
ARTIFACT_KEY = PYFUNC_ARTIFACT_KEY
#: Environment variable choosing the serving device of the pyfunc model.
DEVICE_ENV = "DIFIISR_DEVICE"


def upscale_batch(upscaler: Any, images: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
    """Upscale a ``(N,H,W)`` or ``(N,H,W,3)`` uint8 batch with ``upscaler`` and ``params`` (InferenceSettings
    fields; missing ones take the defaults); returns the same form x4."""
    settings = InferenceSettings.from_params(params)
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"model input must be uint8, got {arr.dtype}; send 8-bit pixel values 0..255")
    if arr.ndim == 2:  # one grey image without the batch axis
        arr = arr[None]
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] != 3):
        raise ValueError(f"model input must be (N,H,W) grey or (N,H,W,3) RGB uint8, got shape {arr.shape}")
    upscaler.check(settings)
    outs = upscaler.upscale_arrays(list(arr), settings)
    return np.stack(outs).astype(np.uint8, copy=False)


def make_python_model() -> Any:
    """Return an instance of the pyfunc class (defined here so importing this module does not import MLflow)."""
    import mlflow.pyfunc

    class _UpscalerPyfunc(mlflow.pyfunc.PythonModel):
        """MLflow pyfunc around ``difiisr.inference.Upscaler``."""

        def load_context(self, context: Any) -> None:
            from difiisr.inference import Upscaler

            device = os.environ.get(DEVICE_ENV, "auto")
            self._upscaler = Upscaler.from_folder(context.artifacts[ARTIFACT_KEY], device=device)

        def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow infers schemas from hints
            return upscale_batch(self._upscaler, np.asarray(model_input), params)

    return _UpscalerPyfunc()


def signature_for(channels: int = 1) -> Any:
    """MLflow signature: uint8 ``(-1,-1,-1)`` (grey) or ``(-1,-1,-1,3)`` (RGB) in and out, plus the params schema."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    shape = (-1, -1, -1) if channels == 1 else (-1, -1, -1, 3)
    tensor = Schema([TensorSpec(np.dtype(np.uint8), shape)])
    kinds = {str: "string", int: "long", float: "double", bool: "boolean"}
    params = ParamSchema(
        [ParamSpec(key, kinds[type(value)], value) for key, value in InferenceSettings().to_params().items()]
    )
    return ModelSignature(inputs=tensor, outputs=tensor, params=params)


def input_example(channels: int = 1, size: int = 16) -> np.ndarray:
    """A small deterministic uint8 example batch of one image (a smooth ramp)."""
    ramp = np.linspace(0, 255, size * size, dtype=np.float64).reshape(size, size).round().astype(np.uint8)
    img = ramp if channels == 1 else np.repeat(ramp[..., None], 3, axis=-1)
    return img[None]


def log_upscaler_model(model_dir: str | Path, *, channels: int = 1, name: str = ARTIFACT_PYFUNC_MODEL) -> Any:
    """Log a model folder as a pyfunc model into the active MLflow run; returns MLflow's ``ModelInfo``."""
    import mlflow

    from difiisr import __version__

    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(MODEL_CODE),
        artifacts={ARTIFACT_KEY: str(model_dir)},
        signature=signature_for(channels),
        input_example=input_example(channels),
        pip_requirements=[f"difiisr=={__version__}"],
        metadata={"difiisr_channels": channels},
    )
