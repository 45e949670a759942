"""``difiisr rollback``: move ``champion`` back to ``previous-champion``."""

from __future__ import annotations

import argparse

from difiisr.registry.names import DEFAULT_MODEL_NAME, RegistryError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``difiisr rollback``."""
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model name")


def run(args: argparse.Namespace) -> int:
    """Roll back and print what moved."""
    from difiisr.registry.promotion import rollback

    try:
        old, new = rollback(args.name)
    except RegistryError as exc:
        print(f"difiisr rollback: {exc}")
        return 1
    print(f"{args.name}: champion rolled back from v{old} to v{new}")
    return 0
