"""``difiisr train``: train the diffusion model (one process, or N under ``accelerate launch``).

Exit codes (``difiisr.errors.ExitCode``): OK when done (or stopped by ``--stop-after``); USAGE for a bad
configuration, data folder or checkpoint; PREEMPTED when stopped by SIGTERM after saving a checkpoint (rerun the
same command with ``--resume``).
"""

from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``difiisr train``."""
    parser.add_argument(
        "--config", required=True, help="training YAML file, or a shipped preset name (train_tiny, train_x4)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set data.train_dir=data/pairs/train --set optim.lr=1e-4 (repeatable)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in out_dir (starts fresh when there is none)",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="STEPS",
        help="save and stop once this many steps are done",
    )


def run(args: argparse.Namespace) -> int:
    """Train and print where the checkpoint and model folder went; returns the exit code."""
    from difiisr.errors import DifiisrError
    from difiisr.training import load_train_config, train

    # Accelerate logs at INFO about its setup; keep its warnings only unless debugging.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("accelerate").setLevel(logging.WARNING)
    try:
        cfg = load_train_config(args.config, args.overrides)
        result = train(cfg, resume=args.resume, stop_after=args.stop_after)
    except DifiisrError as exc:
        print(f"difiisr train: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    if result.main_process:
        print(f"difiisr train: {result.status} at step {result.step} ({result.num_processes} process(es))")
        if result.checkpoint is not None:
            print(f"  checkpoint: {result.checkpoint}")
        if result.model_dir is not None:
            print(f"  model folder (EMA weights): {result.model_dir}")
        for key, value in result.validation.items():
            print(f"  {key}: {value:.3f} dB")
        if result.mlflow_run_id:
            print(f"  MLflow run: {result.mlflow_run_id}")
        if result.status == "preempted":
            print("  preempted: rerun the same command with --resume to continue")
    return int(result.exit_code)
