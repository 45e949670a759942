"""``difiisr upscale``: x4 super-resolve image files and folders with a model folder, MLflow URI or checkpoints.

Outputs go to ``--out DIR`` as ``NAME.png`` (``NAME.tif`` for TIFF inputs), with the input's bit depth and
grey/RGB form; every file is written atomically and records the model (reference, weights digest, registry
version) and every inference setting (PNG text / TIFF description). A rerun skips an output only when its record
has the same model digest and settings; outputs made differently are refused unless ``--overwrite`` is given.
Settings and the output location are checked once, before any image is read; an output folder that overlaps an
input is refused.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from difiisr.errors import ExitCode, UsageError

if TYPE_CHECKING:
    from difiisr.inference.batch_pipeline import BatchItem

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``upscale`` flags to ``parser``."""
    from difiisr.inference.settings import InferenceSettings

    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", type=Path, help="image files or folders (not recursive)"
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    weights = parser.add_argument_group("model (one of --model, --unet-ckpt, --random-init)")
    weights.add_argument(
        "--model",
        "--model-dir",
        dest="model",
        metavar="D|URI",
        help="model folder (model.yaml + safetensors) or MLflow URI: models:/difiisr-x4@champion, "
        "models:/NAME/VERSION, runs:/RUN_ID/model_folder (uses MLFLOW_TRACKING_URI)",
    )
    weights.add_argument(
        "--preset", default=None, help="x4 | tiny | a preset YAML (default x4; not with --model)"
    )
    weights.add_argument(
        "--unet-ckpt", type=Path, metavar="F", help="denoiser checkpoint (.pth/.safetensors)"
    )
    weights.add_argument("--vae-ckpt", type=Path, metavar="F", help="VQGAN checkpoint (latent presets)")
    weights.add_argument(
        "--random-init",
        action="store_true",
        help="random weights (demos/benchmarks only: the output is not SR)",
    )
    InferenceSettings.add_arguments(parser)
    parser.add_argument(
        "--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N (default auto)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every input, replacing existing outputs (default: skip outputs made with the same model and "
        "settings, refuse outputs made differently)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def collect_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Image files named directly or found in the given folders (folder contents sorted), duplicates dropped."""
    from difiisr.io import IMAGE_EXTENSIONS, list_images

    found: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found.extend(list_images(item))
        elif item.is_file():
            found.append(item)
        else:
            raise UsageError(
                f"input {item} does not exist; pass image files ({', '.join(IMAGE_EXTENSIONS)}) or folders"
            )
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise UsageError(
            f"no images found in {', '.join(map(str, inputs))} (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return unique


def output_path(src: Path, out_dir: Path) -> Path:
    """Where the SR of ``src`` goes: ``out_dir/STEM.tif`` for TIFF inputs, ``out_dir/STEM.png`` otherwise."""
    suffix = ".tif" if src.suffix.lower() in (".tif", ".tiff") else ".png"
    return out_dir / f"{src.stem}{suffix}"


def plan_outputs(sources: Sequence[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs; two inputs that would write the same output file raise ``UsageError``."""
    seen: dict[Path, Path] = {}
    pairs = []
    for src in sources:
        dst = output_path(src, out_dir)
        if dst in seen:
            raise UsageError(
                f"{seen[dst]} and {src} would both be written to {dst}; rename one or upscale them into "
                "different --out folders"
            )
        seen[dst] = src
        pairs.append((src, dst))
    return pairs


def build_upscaler(args: argparse.Namespace, workdir: str):  # noqa: ANN201 - (Upscaler, model ref, version)
    """The Upscaler chosen by exactly one of ``--model``, ``--unet-ckpt`` (+``--vae-ckpt``), ``--random-init``,
    with the model reference and registry version to record."""
    from difiisr.inference.upscaler import Upscaler

    sources = [
        name
        for name, given in (
            ("--model", args.model is not None),
            ("--unet-ckpt", args.unet_ckpt is not None),
            ("--random-init", args.random_init),
        )
        if given
    ]
    if not sources:
        raise UsageError(
            "no model weights given: pass --model DIR|URI (a trained model folder or MLflow URI), or --unet-ckpt "
            "F (plus --vae-ckpt F for the latent x4 preset), or --random-init for random weights (demos only)"
        )
    if len(sources) > 1:
        raise UsageError(f"{' and '.join(sources)} both choose the weights; pass only one of them")
    if args.model is not None:
        if args.preset is not None or args.vae_ckpt is not None:
            raise UsageError("--model carries its own preset and weights; drop --preset/--vae-ckpt")
        from difiisr.registry.resolve import resolve_model

        resolved = resolve_model(args.model, workdir)
        return (
            Upscaler.from_folder(resolved.require_folder(), device=args.device),
            resolved.uri or args.model,
            resolved.version,
        )
    preset = args.preset or "x4"
    if args.random_init:
        if args.vae_ckpt is not None:
            raise UsageError("--random-init does not load checkpoints; drop --vae-ckpt")
        logger.warning("using RANDOM weights (--random-init): the outputs are not super-resolved images")
        seed = args.inference_seed or 0
        return Upscaler.from_random(preset, seed=seed, device=args.device), f"random-init:{preset}", None
    return (
        Upscaler.from_checkpoints(preset, args.unet_ckpt, args.vae_ckpt, device=args.device),
        str(args.unet_ckpt),
        None,
    )


def plan_items(pairs: Sequence[tuple[Path, Path]], out_dir: Path) -> list[BatchItem]:
    """The batch pipeline's items for (input file, output file) pairs: each input read from its folder, every
    output written into ``out_dir`` and recording the input's file name."""
    from difiisr.inference.batch_pipeline import BatchItem
    from difiisr.storage.store import LocalStore
    from difiisr.storage.uri import parse_location

    target = LocalStore(parse_location(out_dir))
    sources: dict[Path, LocalStore] = {}
    items = []
    for src, dst in pairs:
        source = sources.setdefault(src.parent, LocalStore(parse_location(src.parent)))
        items.append(BatchItem(src.name, source, src.name, target, dst.name))
    return items


def run(args: argparse.Namespace) -> int:
    """Upscale every input; ``ExitCode.OK``, ``FAILURES`` when some inputs failed, ``USAGE`` for bad flags/model.

    The loop is the batch job's (``inference.batch_pipeline.run_items``) with the "refuse" policy: outputs made
    differently stop the run before any work unless ``--overwrite`` is given.
    """
    from difiisr.inference.batch_pipeline import Engine, run_items
    from difiisr.inference.settings import InferenceSettings
    from difiisr.storage.overlap import check_disjoint

    with tempfile.TemporaryDirectory(prefix="difiisr-model-") as workdir:
        settings = InferenceSettings.from_args(args)
        check_disjoint(args.out, args.inputs)
        pairs = plan_outputs(collect_inputs(args.inputs), args.out)
        upscaler, model_ref, version = build_upscaler(args, workdir)
        engine = Engine.create(upscaler, model_ref, settings, version)
    counts = run_items(
        plan_items(pairs, args.out),
        engine,
        overwrite=args.overwrite,
        stale="refuse",
        progress=not args.no_progress,
        total=len(pairs),
    )
    print(
        f"upscaled {counts.done} image(s), skipped {counts.skipped} existing, {counts.failed} failed -> {args.out} "
        f"({counts.elapsed_s:.1f} s; model {model_ref} digest {upscaler.digest}; {settings.describe()})"
    )
    if counts.failed:
        print(f"difiisr upscale: {counts.failed} input(s) failed (see the log above)", file=sys.stderr)
    return ExitCode.FAILURES if counts.failed else ExitCode.OK
