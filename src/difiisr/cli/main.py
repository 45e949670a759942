"""``difiisr`` entry point: dispatches to one module per verb.

Each verb module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Verb modules are imported only when their verb runs, so ``difiisr --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

from difiisr import __version__

# verb -> (module, one-line help). Help text lives here so --help need not import torch.
VERBS: dict[str, tuple[str, str]] = {
    "synth-data": ("difiisr.cli.synth_data", "generate seeded synthetic thermal (IR) frames"),
    "degrade": ("difiisr.cli.degrade", "make LR/HR pairs (Real-ESRGAN second order or bicubic protocol)"),
    "validate-data": ("difiisr.cli.validate_data", "run the data expectation suite over images or pairs"),
    "upscale": ("difiisr.cli.upscale", "x4 super-resolve images with a preset and checkpoints"),
    "train": ("difiisr.cli.train", "train the diffusion model (Accelerate, resumable, MLflow-tracked)"),
    "evaluate": ("difiisr.cli.evaluate", "evaluate a model on LR/HR pairs against bicubic"),
    "register": ("difiisr.cli.register", "register a trained run as an MLflow model version"),
    "promote": ("difiisr.cli.promote", "move the champion alias to the challenger if it is better"),
    "rollback": ("difiisr.cli.rollback", "move the champion alias back to the previous champion"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per available verb."""
    parser = argparse.ArgumentParser(prog="difiisr", description="difiisr: diffusion x4 infrared super-resolution, data to registry.")
    parser.add_argument("--version", action="version", version=f"difiisr {__version__}")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module, help_text) in VERBS.items():
        if importlib.util.find_spec(module) is None:
            continue
        sub.add_parser(verb, help=help_text, description=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Two-phase parse: find the verb, then let its module add its own arguments.
    pre, _ = parser.parse_known_args(argv)
    if pre.verb is None:
        parser.print_help()
        return 2
    module = importlib.import_module(VERBS[pre.verb][0])
    verb_parser = argparse.ArgumentParser(prog=f"difiisr {pre.verb}", description=VERBS[pre.verb][1])
    module.add_arguments(verb_parser)
    idx = argv.index(pre.verb)
    args = verb_parser.parse_args(argv[idx + 1 :])
    logging.basicConfig(
        level=getattr(logging, str(pre.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(module.run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
