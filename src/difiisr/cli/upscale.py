"""``difiisr upscale``: x4 super-resolve image files and folders with a model preset and weights.

Outputs go to ``--out DIR`` as ``NAME.png`` (``NAME.tif`` for TIFF inputs), with the input's bit depth and
grey/RGB form; every file is written atomically and an existing output is skipped (``--overwrite`` redoes it).
The sampler, steps, seed and model are recorded in the output file (PNG text / TIFF description).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

HELP = "x4 super-resolve images with a preset and checkpoints"

logger = logging.getLogger(__name__)


class UpscaleCLIError(ValueError):
    """Bad command line (inputs, outputs, weight flags); the message says which flag to change."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``upscale`` flags to ``parser``."""
    from difiisr.inference.upscaler import DEVICES, SAMPLERS

    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", type=Path, help="image files or folders (not recursive)"
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    weights = parser.add_argument_group("model (one of --model-dir, --unet-ckpt, --random-init)")
    weights.add_argument(
        "--model-dir",
        "--model",
        dest="model_dir",
        metavar="D|URI",
        help="model folder (model.yaml + safetensors) or MLflow URI: models:/difiisr-x4@champion, "
        "models:/NAME/VERSION, runs:/RUN_ID/model_folder (uses MLFLOW_TRACKING_URI)",
    )
    weights.add_argument(
        "--preset", default=None, help="x4 | tiny | a preset YAML (default x4; not with --model-dir)"
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
    run = parser.add_argument_group("sampling")
    run.add_argument(
        "--sampler", choices=SAMPLERS, default="onestep", help="reverse process (default onestep)"
    )
    run.add_argument(
        "--steps", type=int, default=None, metavar="N", help="respace to N steps (default: preset's)"
    )
    run.add_argument(
        "--tile",
        type=int,
        default=256,
        metavar="N",
        help="tile side in LR pixels, rounded to the network multiple; 0 = never tile (default 256)",
    )
    run.add_argument(
        "--tile-overlap", type=int, default=32, metavar="N", help="tile overlap in LR pixels (default 32)"
    )
    run.add_argument(
        "--batch", type=int, default=1, metavar="N", help="tiles per network call (default 1; raise on a GPU)"
    )
    run.add_argument("--seed", type=int, default=0, help="seed of all noise (recorded in the outputs)")
    run.add_argument("--device", choices=DEVICES, default="auto", help="auto = cuda when available")
    parser.add_argument("--overwrite", action="store_true", help="redo inputs whose output already exists")


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
            raise UpscaleCLIError(
                f"input {item} does not exist; pass image files ({', '.join(IMAGE_EXTENSIONS)}) or folders"
            )
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise UpscaleCLIError(
            f"no images found in {', '.join(map(str, inputs))} (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return unique


def output_path(src: Path, out_dir: Path) -> Path:
    """Where the SR of ``src`` goes: ``out_dir/STEM.tif`` for TIFF inputs, ``out_dir/STEM.png`` otherwise."""
    suffix = ".tif" if src.suffix.lower() in (".tif", ".tiff") else ".png"
    return out_dir / f"{src.stem}{suffix}"


def plan_outputs(sources: Sequence[Path], out_dir: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs; two inputs that would write the same output file raise ``UpscaleCLIError``."""
    seen: dict[Path, Path] = {}
    pairs = []
    for src in sources:
        dst = output_path(src, out_dir)
        if dst in seen:
            raise UpscaleCLIError(
                f"{seen[dst]} and {src} would both be written to {dst}; rename one or upscale them into different --out folders"
            )
        seen[dst] = src
        pairs.append((src, dst))
    return pairs


def build_upscaler(args: argparse.Namespace):  # noqa: ANN201 - returns difiisr.inference.Upscaler (lazy import)
    """The Upscaler chosen by exactly one of ``--model-dir``, ``--unet-ckpt`` (+``--vae-ckpt``), ``--random-init``."""
    from difiisr.inference.upscaler import Upscaler

    sources = [
        name
        for name, given in (
            ("--model-dir", args.model_dir is not None),
            ("--unet-ckpt", args.unet_ckpt is not None),
            ("--random-init", args.random_init),
        )
        if given
    ]
    if not sources:
        raise UpscaleCLIError(
            "no model weights given: pass --model-dir DIR (a trained model folder), or --unet-ckpt F "
            "(plus --vae-ckpt F for the latent x4 preset), or --random-init for random weights (demos only)"
        )
    if len(sources) > 1:
        raise UpscaleCLIError(f"{' and '.join(sources)} both choose the weights; pass only one of them")
    if args.model_dir is not None:
        if args.preset is not None or args.vae_ckpt is not None:
            raise UpscaleCLIError("--model-dir carries its own preset and weights; drop --preset/--vae-ckpt")
        import tempfile

        from difiisr.registry.resolve import model_folder

        with tempfile.TemporaryDirectory(prefix="difiisr-model-") as tmp:
            return Upscaler.from_folder(model_folder(args.model_dir, tmp), device=args.device)
    preset = args.preset or "x4"
    if args.random_init:
        if args.vae_ckpt is not None:
            raise UpscaleCLIError("--random-init does not load checkpoints; drop --vae-ckpt")
        logger.warning("using RANDOM weights (--random-init): the outputs are not super-resolved images")
        return Upscaler.from_random(preset, seed=args.seed, device=args.device)
    return Upscaler.from_checkpoints(preset, args.unet_ckpt, args.vae_ckpt, device=args.device)


def run(args: argparse.Namespace) -> int:
    """Upscale every input; 0 when all succeeded, 1 when some inputs failed, 2 on a usage/model error."""
    from difiisr.config import ConfigError
    from difiisr.inference.upscaler import UpscaleError
    from difiisr.io import ImageReadError, read_image, write_image
    from difiisr.models.bundle import ModelFolderError
    from difiisr.models.checkpoint import CheckpointError
    from difiisr.registry.resolve import ModelReferenceError

    try:
        pairs = plan_outputs(collect_inputs(args.inputs), args.out)
        todo = [(src, dst) for src, dst in pairs if args.overwrite or not dst.exists()]
        skipped = len(pairs) - len(todo)
        upscaler = build_upscaler(args) if todo else None
    except (
        UpscaleCLIError,
        UpscaleError,
        ModelFolderError,
        ModelReferenceError,
        CheckpointError,
        ConfigError,
        OSError,
    ) as exc:
        print(f"difiisr upscale: error: {exc}", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    done, failed = 0, 0
    start = time.perf_counter()
    for src, dst in tqdm(todo, desc="upscale", unit="img", disable=not todo):
        assert upscaler is not None
        try:
            image = read_image(src)
            sr = upscaler.upscale_array(
                image.pixels,
                sampler=args.sampler,
                steps=args.steps,
                seed=args.seed,
                tile=args.tile or None,
                tile_overlap=args.tile_overlap,
                batch=args.batch,
                progress=True,
            )
            record = {
                "source": src.name,
                "model": str(args.model_dir or args.unet_ckpt or "random-init"),
                "preset": upscaler.preset.name,
                "sampler": args.sampler,
                "steps": str(args.steps or upscaler.diffusion(args.steps).num_timesteps),
                "seed": str(args.seed),
            }
            write_image(dst, sr, text=record)
            done += 1
        except (ImageReadError, UpscaleError, ValueError) as exc:
            failed += 1
            logger.error("%s: %s", src, exc)
        except Exception as exc:  # keep going for the other inputs; the summary and exit code report it
            failed += 1
            logger.exception("%s: unexpected failure: %s", src, exc)
    elapsed = time.perf_counter() - start
    print(
        f"upscaled {done} image(s), skipped {skipped} existing, {failed} failed -> {args.out} "
        f"({elapsed:.1f} s, sampler {args.sampler}, seed {args.seed})"
    )
    return 1 if failed else 0
