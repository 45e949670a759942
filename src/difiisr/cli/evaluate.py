"""``difiisr evaluate``: evaluate a model on LR/HR pairs against bicubic; write CSV/JSON/HTML; log to MLflow."""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
from pathlib import Path

KEY_METRICS = ("psnr_y", "ssim_y", "niqe", "lpips")

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``difiisr evaluate``."""
    from difiisr.inference.settings import InferenceSettings

    parser.add_argument(
        "--model",
        required=True,
        help="model folder (model.yaml + safetensors), MLflow model folder, or MLflow URI "
        "(models:/difiisr-x4@champion, runs:/RUN_ID/model_folder); 'bicubic' evaluates the baseline alone",
    )
    parser.add_argument(
        "--pairs", required=True, type=Path, help="pairs folder with hr/ and lr/ (same file names)"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder (per_image.csv, aggregate.json, ...)"
    )
    parser.add_argument("--name", default=None, help="method name in the reports (default: from --model)")
    InferenceSettings.add_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    parser.add_argument(
        "--via-pyfunc",
        action="store_true",
        help="run a registered model through mlflow.pyfunc (8-bit) instead of the upscaler engine",
    )
    parser.add_argument(
        "--lpips-weights",
        action="append",
        default=None,
        metavar="FILE",
        help="local LPIPS AlexNet weights (repeat for lins + trunk); default $DIFIISR_LPIPS_WEIGHTS, else skipped",
    )
    parser.add_argument("--crops", type=int, default=4, help="images with side-by-side crops in report.html")
    parser.add_argument(
        "--mlflow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log metrics and reports to MLflow (default: when MLFLOW_TRACKING_URI is set)",
    )
    parser.add_argument(
        "--run-id", default=None, help="MLflow run to log to (default: runs:/ID of --model, else new)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _default_name(ref: str) -> str:
    if ref == "bicubic":
        return "bicubic"
    path = Path(ref)
    return path.name if path.is_dir() else ref


def _run_id_from_uri(ref: str) -> str | None:
    if ref.startswith("runs:/"):
        rest = ref[len("runs:/") :].strip("/")
        return rest.split("/", 1)[0] or None
    return None


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else str(value)


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the reports, optionally log to MLflow, print a summary; returns the exit code."""
    from difiisr.evaluation.evaluate import evaluate_pairs, log_to_mlflow
    from difiisr.evaluation.model_source import load_upscale_fn
    from difiisr.inference.settings import InferenceSettings
    from difiisr.storage.overlap import check_disjoint

    settings = InferenceSettings.from_args(args)
    check_disjoint(args.out, [args.pairs])
    name = args.name or _default_name(args.model)
    with tempfile.TemporaryDirectory(prefix="difiisr-evaluate-") as workdir:
        if args.model == "bicubic":
            upscale_fn, meta = None, {"model": "bicubic"}
        else:
            upscale_fn, meta = load_upscale_fn(
                args.model, settings, workdir, device=args.device, via_pyfunc=args.via_pyfunc
            )
        result = evaluate_pairs(
            upscale_fn,
            args.pairs,
            args.out,
            name=name,
            lpips_weights=args.lpips_weights,
            crops=args.crops,
            progress=not args.no_progress,
            meta=meta,
        )

    use_mlflow = args.mlflow if args.mlflow is not None else bool(os.environ.get("MLFLOW_TRACKING_URI"))
    run_id = None
    if use_mlflow:
        run_id = log_to_mlflow(result, run_id=args.run_id or _run_id_from_uri(args.model))

    model = result.model_means
    parts = []
    for metric in KEY_METRICS:
        if metric not in result.metric_names:
            continue
        text = f"{metric} {_fmt(model[metric])}"
        if result.deltas:
            text += f" (bicubic {_fmt(result.means['bicubic'][metric])}, {result.deltas[metric]:+.4f})"
        parts.append(text)
    print(
        f"evaluated {result.name} on {result.n_images} pairs (eval md5 {result.dataset_md5}): "
        + "; ".join(parts)
    )
    for key, why in result.not_computed.items():
        print(f"  {key}: {why}")
    print(f"  wrote {result.csv_path}, {result.json_path}, {result.html_path}")
    if result.sr_dir is not None:
        print(f"  SR images in {result.sr_dir}")
    if run_id is not None:
        print(f"  logged to MLflow run {run_id}")
    return 0
