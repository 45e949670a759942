"""``difiisr rollback``: move ``champion`` back to ``previous-champion``."""

from __future__ import annotations

import argparse

from difiisr.errors import ExitCode
from difiisr.registry.names import DEFAULT_MODEL_NAME


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``difiisr rollback``."""
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model name")


def run(args: argparse.Namespace) -> int:
    """Roll back and print what moved (registry errors propagate to the dispatcher)."""
    from difiisr.registry.promotion import rollback

    old, new = rollback(args.name)
    print(f"{args.name}: champion rolled back from v{old} to v{new}")
    return ExitCode.OK
