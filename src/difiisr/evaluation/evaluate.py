"""Evaluate a x4 upscaler on LR/HR pairs against the bicubic baseline; write CSV, JSON, HTML; log to MLflow.

Outputs in ``out_dir`` (all written atomically):

- ``per_image.csv``: one row per image and method (``bicubic`` first, then the model), one column per metric;
- ``aggregate.json``: mean per metric per method, model minus bicubic, evaluation-set md5, number of images,
  the metric conventions in words, and what was not computed (and why);
- ``metrics.json``: the same aggregate numbers flat (``mlflow_metrics`` keys), for ``dvc metrics show``;
- ``report.html``: self-contained report (metrics table, crops bicubic | SR | HR, per-image table);
- ``sr/NAME.png``: the model's SR images (lossless PNG, the LR's bit depth).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from tqdm import tqdm

from difiisr.data.fingerprint import MD5_DEFINITION
from difiisr.data.pairs import dataset_md5, list_pairs
from difiisr.errors import DifiisrError
from difiisr.evaluation.baseline import bicubic_upscale
from difiisr.evaluation.lpips import LPIPSAlex, load_lpips_alex, lpips_distance, lpips_weights_from_env
from difiisr.evaluation.metrics import HIGHER_IS_BETTER, METRIC_CONVENTIONS, niqe, psnr, psnr_y, ssim, ssim_y
from difiisr.evaluation.report import CropSet, make_crop_set, write_csv, write_html, write_json
from difiisr.registry.names import (
    ARTIFACT_EVALUATION,
    RUN_TAG_EVAL_MD5,
    RUN_TAG_EVAL_N_IMAGES,
    RUN_TAG_EVAL_NAME,
    RUN_TAG_EVAL_NOT_COMPUTED_PREFIX,
    eval_metric_key,
)
from difiisr.storage import remove_stale_temp_files

log = logging.getLogger(__name__)

SF: Final = 4
BICUBIC: Final = "bicubic"
CSV_NAME: Final = "per_image.csv"
JSON_NAME: Final = "aggregate.json"
METRICS_NAME: Final = "metrics.json"
HTML_NAME: Final = "report.html"
SR_DIRNAME: Final = "sr"
BASE_METRICS: Final = ("psnr_y", "ssim_y", "psnr", "ssim", "niqe")
NEEDS_WEIGHTS: Final = {
    "clipiqa": "not computed: needs local weights (CLIP + CLIPIQA prompts); none are bundled",
    "musiq": "not computed: needs local weights (MUSIQ KonIQ); none are bundled",
}
LPIPS_NO_WEIGHTS: Final = "not computed: no weights (pass --lpips-weights FILE or set DIFIISR_LPIPS_WEIGHTS)"

UpscaleFn = Callable[[np.ndarray], np.ndarray]


class EvaluationError(DifiisrError, RuntimeError):
    """An evaluation cannot proceed (bad pair sizes, model output of the wrong size); the message names the image."""


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """What ``evaluate_pairs`` wrote and measured. ``means[method][metric]`` (NaN-free means; inf stays inf)."""

    name: str
    out_dir: Path
    csv_path: Path
    json_path: Path
    html_path: Path
    sr_dir: Path | None
    dataset_md5: str
    n_images: int
    methods: tuple[str, ...]
    metric_names: tuple[str, ...]
    means: dict[str, dict[str, float]]
    deltas: dict[str, float]
    not_computed: dict[str, str]
    rows: tuple[dict[str, Any], ...]

    @property
    def model_means(self) -> dict[str, float]:
        """Means of the evaluated model (of bicubic when the evaluation had no model)."""
        return self.means[self.methods[-1]]


def image_metrics(sr: np.ndarray, hr: np.ndarray, lpips_model: LPIPSAlex | None = None) -> dict[str, float]:
    """All metrics of one SR/HR pair (``(H,W)``/``(H,W,3)`` uint8/uint16): psnr_y, ssim_y, psnr, ssim, niqe[, lpips]."""
    out = {
        "psnr_y": psnr_y(sr, hr),
        "ssim_y": ssim_y(sr, hr),
        "psnr": psnr(sr, hr),
        "ssim": ssim(sr, hr),
        "niqe": niqe(sr),
    }
    if lpips_model is not None:
        out["lpips"] = lpips_distance(lpips_model, sr, hr)
    return out


def _mean(values: Sequence[float]) -> float:
    """Mean ignoring NaN (NIQE of too-small images); NaN if none; inf if any value is inf."""
    finite_or_inf = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite_or_inf)) if finite_or_inf else math.nan


def _check_sr(name: str, what: str, sr: Any, lr: np.ndarray) -> np.ndarray:
    """``sr`` as an array after checking it is x4 the LR, grey or RGB, uint8/uint16; else ``EvaluationError``."""
    arr = np.asarray(sr)
    want = (lr.shape[0] * SF, lr.shape[1] * SF)
    if arr.ndim not in (2, 3) or arr.shape[:2] != want or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
        raise EvaluationError(
            f"{name}: {what} returned shape {arr.shape}; expected {want[0]}x{want[1]} (x{SF} the LR "
            f"{lr.shape[0]}x{lr.shape[1]}), grey (H,W) or RGB (H,W,3)"
        )
    if arr.dtype not in (np.uint8, np.uint16):
        raise EvaluationError(f"{name}: {what} returned dtype {arr.dtype}; expected uint8 or uint16 pixels")
    return arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr


def evaluate_pairs(
    upscale_fn: UpscaleFn | None,
    pairs_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str = "model",
    lpips_weights: str | Path | Sequence[str | Path] | None = None,
    crops: int = 4,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> EvaluationResult:
    """Evaluate ``upscale_fn`` (LR pixels -> x4 SR pixels, same dtype/form) and bicubic on ``pairs_dir``.

    ``upscale_fn=None`` evaluates the bicubic baseline alone (no SR images, no deltas). ``crops`` images (in name
    order) get side-by-side crops in the HTML report. ``meta`` (e.g. sampler, steps, seed, model URI) is recorded
    in the JSON. Returns an ``EvaluationResult``; raises ``PairsError``/``EvaluationError`` naming the bad file.
    """
    if name == BICUBIC and upscale_fn is not None:
        raise EvaluationError(f"name {BICUBIC!r} is reserved for the baseline; give the model another name")
    from difiisr.io import read_image, write_image

    pairs_root, out = Path(pairs_dir), Path(out_dir)
    pairs = list_pairs(pairs_root)
    md5 = dataset_md5(pairs_root)
    out.mkdir(parents=True, exist_ok=True)
    for folder in (out, out / SR_DIRNAME):
        for stale in remove_stale_temp_files(folder):
            log.info("removed %s, left by an interrupted earlier run", stale)

    weight_files = lpips_weights_from_env(
        None
        if lpips_weights is None
        else ([lpips_weights] if isinstance(lpips_weights, str | Path) else lpips_weights)
    )
    lpips_model = load_lpips_alex(weight_files) if weight_files else None
    metric_names = (*BASE_METRICS, "lpips") if lpips_model is not None else BASE_METRICS
    not_computed = dict(NEEDS_WEIGHTS)
    if lpips_model is None:
        not_computed = {"lpips": LPIPS_NO_WEIGHTS, **not_computed}

    methods = (BICUBIC,) if upscale_fn is None else (BICUBIC, name)
    sr_dir = out / SR_DIRNAME if upscale_fn is not None else None
    rows: list[dict[str, Any]] = []
    crop_sets: list[CropSet] = []
    for pair in tqdm(pairs, desc=f"evaluate {methods[-1]}", unit="img", disable=not progress):
        hr = read_image(pair.hr).pixels
        lr = read_image(pair.lr).pixels
        if hr.shape[:2] != (lr.shape[0] * SF, lr.shape[1] * SF):
            raise EvaluationError(
                f"{pair.hr}: HR is {hr.shape[1]}x{hr.shape[0]} but LR {pair.lr} is {lr.shape[1]}x{lr.shape[0]}; "
                f"HR must be exactly x{SF} the LR"
            )
        outputs = {BICUBIC: bicubic_upscale(lr, SF)}
        if upscale_fn is not None:
            sr = _check_sr(pair.name, "upscale_fn", upscale_fn(lr), lr)
            outputs[name] = sr
            write_image(sr_dir / f"{Path(pair.name).stem}.png", sr)
        for method in methods:
            values = image_metrics(outputs[method], hr, lpips_model)
            rows.append({"image": pair.name, "method": method, **values})
        if len(crop_sets) < crops:
            caption = ", ".join(
                f"{m} psnr_y {r['psnr_y']:.2f} dB ssim_y {r['ssim_y']:.4f}"
                for m, r in zip(methods, rows[-len(methods) :], strict=True)
            )
            panels = [(m, outputs[m]) for m in methods] + [("HR", hr)]
            crop_sets.append(make_crop_set(pair.name, panels, caption))

    means = {m: {k: _mean([r[k] for r in rows if r["method"] == m]) for k in metric_names} for m in methods}
    deltas = {k: means[name][k] - means[BICUBIC][k] for k in metric_names} if upscale_fn is not None else {}
    summary: dict[str, Any] = {
        "name": methods[-1],
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pairs_dir": str(pairs_root.resolve()),
        "dataset_md5": md5,
        "md5_definition": MD5_DEFINITION,
        "n_images": len(pairs),
        "sf": SF,
        "methods": list(methods),
        "metric_names": list(metric_names),
        "metrics": means,
        "delta_vs_bicubic": deltas,
        "higher_is_better": {k: HIGHER_IS_BETTER[k] for k in metric_names},
        "conventions": {k: METRIC_CONVENTIONS[k] for k in metric_names},
        "not_computed": not_computed,
        "baseline": "PIL Image.resize BICUBIC x4 of the LR (8-bit path for uint8, float path for uint16)",
        "files": {"csv": CSV_NAME, "html": HTML_NAME, "sr_dir": SR_DIRNAME if sr_dir else None},
        "meta": dict(meta or {}),
    }
    columns = ["image", "method", *metric_names]
    csv_path = write_csv(out / CSV_NAME, rows, columns)
    json_path = write_json(out / JSON_NAME, summary)
    html_path = write_html(out / HTML_NAME, summary, rows, crop_sets)
    log.info("evaluated %d pairs (md5 %s) -> %s", len(pairs), md5, out)
    result = EvaluationResult(
        name=methods[-1],
        out_dir=out,
        csv_path=csv_path,
        json_path=json_path,
        html_path=html_path,
        sr_dir=sr_dir,
        dataset_md5=md5,
        n_images=len(pairs),
        methods=methods,
        metric_names=metric_names,
        means=means,
        deltas=deltas,
        not_computed=not_computed,
        rows=tuple(rows),
    )
    write_json(out / METRICS_NAME, mlflow_metrics(result))
    return result


def mlflow_metrics(result: EvaluationResult) -> dict[str, float]:
    """The finite aggregate numbers as MLflow metric keys (``registry.names.eval_metric_key``)."""
    out: dict[str, float] = {eval_metric_key("n_images"): float(result.n_images)}
    for metric in result.metric_names:
        if len(result.methods) > 1:
            out[eval_metric_key(metric)] = result.means[result.methods[-1]][metric]
            out[eval_metric_key(metric, method="delta")] = result.deltas[metric]
        out[eval_metric_key(metric, method="bicubic")] = result.means[BICUBIC][metric]
    return {k: float(v) for k, v in out.items() if math.isfinite(v)}


def log_to_mlflow(result: EvaluationResult, run_id: str | None = None) -> str:
    """Log metrics, the ``eval_md5`` tag and the report files to ``run_id``, the active run, or a new run.

    Uses whatever ``MLFLOW_TRACKING_URI`` (and ``MLFLOW_EXPERIMENT_NAME``) say. Returns the run id that received
    the results. Metric keys: see ``mlflow_metrics``; artifacts go under ``evaluation/``.
    """
    import mlflow

    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            with mlflow.start_run(run_name=f"evaluate-{result.name}") as run:
                return _log_to_run(result, run.info.run_id)
        run_id = active.info.run_id
    return _log_to_run(result, run_id)


def _log_to_run(result: EvaluationResult, run_id: str) -> str:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    client = MlflowClient()
    ts = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    metrics = [Metric(k, v, ts, 0) for k, v in mlflow_metrics(result).items()]
    tags = [
        RunTag(RUN_TAG_EVAL_MD5, result.dataset_md5),
        RunTag(RUN_TAG_EVAL_NAME, result.name),
        RunTag(RUN_TAG_EVAL_N_IMAGES, str(result.n_images)),
        *(RunTag(f"{RUN_TAG_EVAL_NOT_COMPUTED_PREFIX}{k}", v) for k, v in result.not_computed.items()),
    ]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    for path in (result.csv_path, result.json_path, result.html_path):
        client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_EVALUATION)
    log.info(
        "logged evaluation (%d metrics, md5 %s) to MLflow run %s", len(metrics), result.dataset_md5, run_id
    )
    return run_id
