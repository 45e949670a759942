"""``difiisr promote``: move ``champion`` to the challenger only when it is better by a margin."""

from __future__ import annotations

import argparse

from difiisr.registry.names import DEFAULT_MODEL_NAME, RegistryError


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
    """Decide, print the decision; exit 0 when promoted or unchanged, 3 when rejected, 1 when refused."""
    from difiisr.registry.promotion import promote

    try:
        decision = promote(args.name, metric=args.metric, min_delta=args.min_delta, version=args.version)
    except RegistryError as exc:
        print(f"difiisr promote: {exc}")
        return 1
    print(decision.summary())
    return {"promoted": 0, "unchanged": 0, "rejected": 3}.get(decision.outcome, 1)
