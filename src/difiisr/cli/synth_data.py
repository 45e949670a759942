"""``difiisr synth-data``: write seeded synthetic thermal frames (``synth_000000.png`` ...) to a folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def _size(text: str) -> tuple[int, int]:
    """argparse type for ``WxH`` (pixels)."""
    from difiisr.data.synthetic import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    """argparse type for a count >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: --out DIR --n N --size WxH --bit-depth 8|16 --seed S [--no-progress]."""
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--n", type=_count, default=16, help="number of frames (default 16)")
    parser.add_argument(
        "--size", type=_size, default=(256, 256), metavar="WxH", help="frame size (default 256x256)"
    )
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="8 or 16 (default 8)")
    parser.add_argument(
        "--seed", type=_count, default=0, help="base seed; frame k uses a seed derived from it and k"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate the frames, skipping files already present; print a one-line summary."""
    from difiisr.data.synthetic import dataset_paths, generate_dataset

    existing = sum(p.exists() for p in dataset_paths(args.out, args.n))
    generate_dataset(args.out, args.n, args.size, args.bit_depth, args.seed, progress=not args.no_progress)
    width, height = args.size
    print(
        f"wrote {args.n - existing} images ({existing} skipped) to {args.out} "
        f"[{width}x{height}, {args.bit_depth}-bit, seed {args.seed}]"
    )
    return 0
