"""``difiisr degrade``: make an LR/HR pairs folder (Real-ESRGAN second order or the bicubic test protocol)."""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)

_PROTOCOL_DEFAULT = -1  # --crop not given: gt_size for realesrgan, whole images for bicubic (not a string:
# argparse would run a string default through the type converter)


def _crop_arg(text: str) -> int | None:
    """``--crop`` value: a positive int, or ``none``/``0`` for whole images."""
    if text.strip().lower() in ("none", "0", "full"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--crop {text!r}: expected a size in pixels (e.g. 256) or 'none'"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--crop {text!r}: must be positive (or 'none' for whole images)")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``degrade`` options to ``parser``."""
    parser.add_argument(
        "--hr", required=True, metavar="DIR", help="folder of HR images (png, tif, jpg; 8/16-bit)"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="pairs folder to write (hr/, lr/, manifest.jsonl)"
    )
    parser.add_argument("--protocol", choices=("realesrgan", "bicubic"), default="realesrgan")
    parser.add_argument(
        "--variants", type=int, default=1, metavar="K", help="LR variants per HR image (default 1)"
    )
    parser.add_argument(
        "--crop",
        type=_crop_arg,
        default=_PROTOCOL_DEFAULT,
        metavar="PX",
        help="square HR crop in pixels, or 'none' for whole images "
        "(default: gt_size=256 for realesrgan, none for bicubic)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="base seed; pair seeds derive from (seed, file, variant)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (realesrgan only)")
    parser.add_argument(
        "--batch-size", type=int, default=8, metavar="N", help="pairs per device call (default 8)"
    )
    parser.add_argument(
        "--config", metavar="YAML", help="RealESRGANConfig fields (e.g. gray_noise_prob: 1.0)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Write the pairs, report each bad HR file, print a summary; returns an ``ExitCode``.

    OK when every HR file gave its pairs, FAILURES when some HR files could not be used (the others are written),
    USAGE on a bad flag, config or folder (nothing written), JOB_FAILED when writing itself failed.
    """
    from difiisr.config import ConfigError, apply_overrides, from_mapping, load_yaml
    from difiisr.degradation import RealESRGANConfig, degrade_folder
    from difiisr.errors import DifiisrError, ExitCode
    from difiisr.storage.overlap import check_disjoint

    try:
        check_disjoint(args.out, [args.hr])
        mapping = load_yaml(args.config) if args.config else {}
        mapping = apply_overrides(mapping, args.set)
        config = from_mapping(RealESRGANConfig, mapping, args.config or "--set")
        crop = args.crop
        if crop == _PROTOCOL_DEFAULT:
            crop = config.gt_size if args.protocol == "realesrgan" else None
        summary = degrade_folder(
            args.hr,
            args.out,
            protocol=args.protocol,
            variants=args.variants,
            crop=crop,
            seed=args.seed,
            device=args.device,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            config=config,
        )
    except (DifiisrError, ConfigError) as exc:
        print(f"difiisr degrade: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", ExitCode.USAGE))
    except OSError as exc:
        print(f"difiisr degrade: error: {exc}", file=sys.stderr)
        return int(ExitCode.JOB_FAILED)
    print(summary.line())
    if summary.failures:
        print(f"difiisr degrade: {len(summary.failures)} HR file(s) gave no pairs:", file=sys.stderr)
        for failure in summary.failures:
            print(f"  {failure.line()}", file=sys.stderr)
        return int(ExitCode.FAILURES)
    return int(ExitCode.OK)
