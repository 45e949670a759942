"""``difiisr`` entry point: dispatches to one module per verb.

Each verb module defines ``add_arguments(parser)`` and ``run(args) -> int``. Verb modules are imported only when
their verb runs, so ``difiisr --help`` stays fast (no torch import). A verb stops on a ``DifiisrError`` by
raising it: the dispatcher prints ``difiisr VERB: error: MESSAGE`` and exits with the error's ``exit_code``
(``difiisr.errors.ExitCode``, listed in ``--help``); any other exception is a failed job (logged with its
traceback, exit ``ExitCode.JOB_FAILED``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from difiisr import __version__
from difiisr.errors import DifiisrError, ExitCode, exit_codes_help

# verb -> (module, one-line help). Help text lives here so --help need not import the verb's module.
VERBS: dict[str, tuple[str, str]] = {
    "synth-data": ("difiisr.cli.synth_data", "generate seeded synthetic thermal (IR) frames"),
    "version-data": ("difiisr.cli.version_data", "track data folders with DVC and push them to a remote"),
    "degrade": ("difiisr.cli.degrade", "make LR/HR pairs (Real-ESRGAN second order or bicubic protocol)"),
    "validate-data": ("difiisr.cli.validate_data", "run the data expectation suite over images or pairs"),
    "upscale": ("difiisr.cli.upscale", "x4 super-resolve images with a preset and checkpoints"),
    "batch-upscale": (
        "difiisr.cli.batch_upscale",
        "x4 super-resolve a folder or S3 prefix: idempotent, resumable, sharded, with a run report",
    ),
    "train": ("difiisr.cli.train", "train the diffusion model (Accelerate, resumable, MLflow-tracked)"),
    "evaluate": ("difiisr.cli.evaluate", "evaluate a model on LR/HR pairs against bicubic"),
    "register": ("difiisr.cli.register", "register an evaluated run as an MLflow model version (challenger)"),
    "promote": ("difiisr.cli.promote", "move the champion alias to the challenger if it is better"),
    "rollback": ("difiisr.cli.rollback", "move the champion alias back to the previous champion"),
    "serve": ("difiisr.cli.serve", "serve a registered model over REST (mlflow models serve, 127.0.0.1)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: global options, the verb, and the verb's own arguments (parsed later)."""
    width = max(len(v) for v in VERBS)
    epilog = "verbs:\n" + "\n".join(f"  {v:<{width}}  {h}" for v, (_, h) in VERBS.items())
    epilog += "\n\nRun 'difiisr VERB --help' for the options of one verb.\n\n" + exit_codes_help()
    parser = argparse.ArgumentParser(
        prog="difiisr",
        description="difiisr: diffusion x4 infrared super-resolution, from data to registry.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"difiisr {__version__}")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")
    parser.add_argument("verb", nargs="?", choices=list(VERBS), metavar="VERB", help="what to do (see below)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.verb is None:
        parser.print_help()
        return int(ExitCode.USAGE)
    module_name, help_text = VERBS[ns.verb]
    module = importlib.import_module(module_name)
    verb_parser = argparse.ArgumentParser(
        prog=f"difiisr {ns.verb}",
        description=help_text,
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(verb_parser)
    args = verb_parser.parse_args(ns.args)
    logging.basicConfig(
        level=getattr(logging, str(ns.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(module.run(args) or 0)
    except DifiisrError as exc:
        print(f"difiisr {ns.verb}: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print(f"difiisr {ns.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        logging.getLogger("difiisr").exception("difiisr %s failed", ns.verb)
        return int(ExitCode.JOB_FAILED)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
