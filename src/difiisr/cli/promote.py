"""``difiisr promote``: move ``champion`` to the challenger only when it is better by a margin."""

from __future__ import annotations

import argparse

from difiisr.errors import ExitCode
from difiisr.registry.names import DEFAULT_MODEL_NAME


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``difiisr promote``."""
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model name")
    parser.add_argument(
        "--metric", default="psnr_y", help="evaluation metric to compare (psnr_y, ssim_y, niqe, ...)"
    )
    parser.add_argument("--min-delta", type=float, default=0.05, help="required improvement in metric units")
    parser.add_argument(
        "--version", default=None, help="compare this version instead of the 'challenger' alias"
    )


def run(args: argparse.Namespace) -> int:
    """Decide and print the decision: ``OK`` when promoted or unchanged, ``NOT_PROMOTED`` when rejected or refused."""
    from difiisr.registry.promotion import promote

    decision = promote(args.name, metric=args.metric, min_delta=args.min_delta, version=args.version)
    print(decision.summary())
    return ExitCode.OK if decision.outcome in ("promoted", "unchanged") else ExitCode.NOT_PROMOTED
