"""``difiisr register``: register an evaluated training run as a model version with alias ``challenger``."""

from __future__ import annotations

import argparse

from difiisr.registry.names import DEFAULT_MODEL_NAME, RegistryError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``difiisr register``."""
    parser.add_argument(
        "--run-id", required=True, help="MLflow run that holds the model folder and evaluation"
    )
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model name")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=1, help="signature: 1 grey, 3 RGB")
    parser.add_argument("--artifact-path", default="model_folder", help="artifact path of the model folder")


def run(args: argparse.Namespace) -> int:
    """Register and print the new version."""
    from difiisr.registry.register import register_run

    try:
        mv = register_run(args.run_id, args.name, channels=args.channels, artifact_path=args.artifact_path)
    except RegistryError as exc:
        print(f"difiisr register: {exc}")
        return 1
    print(f"registered {args.name} v{mv.version} (alias challenger) from run {args.run_id}")
    return 0
