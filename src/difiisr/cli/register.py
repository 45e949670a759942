"""``difiisr register``: register an evaluated training run as a model version with alias ``challenger``."""

from __future__ import annotations

import argparse

from difiisr.errors import ExitCode
from difiisr.registry.names import ALIAS_CHALLENGER, ARTIFACT_MODEL_FOLDER, DEFAULT_MODEL_NAME


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``difiisr register``."""
    parser.add_argument(
        "--run-id", required=True, help="MLflow run that holds the model folder and evaluation"
    )
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model name")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1, help="signature: 1 grey, 3 RGB")
    parser.add_argument(
        "--artifact-path", default=ARTIFACT_MODEL_FOLDER, help="artifact path of the model folder in the run"
    )


def run(args: argparse.Namespace) -> int:
    """Register and print the new version (registry errors propagate to the dispatcher)."""
    from difiisr.registry.register import register_run

    mv = register_run(args.run_id, args.name, channels=args.channels, artifact_path=args.artifact_path)
    print(f"registered {args.name} v{mv.version} (alias {ALIAS_CHALLENGER}) from run {args.run_id}")
    return ExitCode.OK
