"""``python -m difiisr.stack up|down|status|env``: the local stack's command line (``make stack-*``).

``up`` prints where things are and how to load the client variables, never a secret; ``env`` is the one
command that prints the credentials, as ``export`` lines meant for ``eval "$(python -m difiisr.stack env)"``.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from difiisr.errors import ExitCode
from difiisr.stack.errors import StackError
from difiisr.stack.local import ENV_ROOT, LocalStack, StackConfig
from difiisr.stack.mlflow_server import DEFAULT_MLFLOW_PORT, ENV_MLFLOW_PORT, MLflowServer
from difiisr.stack.seaweedfs import DEFAULT_S3_PORT, ENV_S3_PORT, SeaweedFS

PROG = "python -m difiisr.stack"


def export_lines(env: Mapping[str, str]) -> str:
    """``export KEY=VALUE`` lines (values shell-quoted) that ``eval`` loads into a POSIX shell."""
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


def load_command(root: Path) -> str:
    """The shell command that loads this stack's client variables (run with this very Python)."""
    return f'eval "$({shlex.quote(sys.executable)} -m difiisr.stack env --root {shlex.quote(str(root))})"'


def up_summary(stack: LocalStack, s3: SeaweedFS, mlflow: MLflowServer) -> str:
    """What ``up`` prints: URLs, buckets, the credentials file and how to load it; no secret value."""
    return (
        f"local stack up under {stack.root}\n"
        f"  MLflow tracking  {mlflow.tracking_uri}\n"
        f"  S3 (SeaweedFS)   {s3.endpoint_url}  buckets: {', '.join(s3.buckets)}\n"
        f"  credentials      {stack.credentials_file} (mode 0600; values not printed)\n"
        "load the client variables (MLFLOW_TRACKING_URI, AWS_*) into this shell with:\n"
        f"  {load_command(stack.root)}\n"
    )


def build_parser() -> argparse.ArgumentParser:
    """The stack command's argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Local SeaweedFS S3 + MLflow tracking server on 127.0.0.1.",
        epilog="commands:\n"
        "  up      start (or adopt) both servers; prints URLs and where the credentials file is\n"
        "  down    stop both servers (SIGTERM, then SIGKILL, to each server's process group)\n"
        "  status  whether each server runs and answers its health check\n"
        f'  env     export lines with the credentials, for: eval "$({PROG} env)"\n\n'
        "exit codes:\n"
        f"  {ExitCode.OK:>3}  done (status: both servers healthy)\n"
        f"  {ExitCode.FAILURES:>3}  status: a server is not running or not healthy\n"
        f"  {ExitCode.USAGE:>3}  bad flag or DIFIISR_* variable (e.g. a port in use); nothing was started\n"
        f"  {ExitCode.JOB_FAILED:>3}  a server could not be started, reached or stopped (the message has its log)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=("up", "down", "status", "env"), help="what to do")
    parser.add_argument(
        "--root", type=Path, default=None, help=f"state folder (default ./.difiisr, or ${ENV_ROOT})"
    )
    parser.add_argument(
        "--s3-port", type=int, default=None, help=f"S3 port (default {DEFAULT_S3_PORT}, or ${ENV_S3_PORT})"
    )
    parser.add_argument(
        "--mlflow-port",
        type=int,
        default=None,
        help=f"MLflow port (default {DEFAULT_MLFLOW_PORT}, or ${ENV_MLFLOW_PORT})",
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for health (default 180)"
    )
    return parser


def _run(command: str, stack: LocalStack, timeout: float) -> int:
    if command == "up":
        s3, mlflow = stack.up(timeout=timeout)
        print(up_summary(stack, s3, mlflow), end="")
        return ExitCode.OK
    if command == "down":
        for name, pids in stack.down().items():
            print(f"{name}: {'stopped ' + ' '.join(map(str, pids)) if pids else 'was not running'}")
        return ExitCode.OK
    if command == "env":
        s3, mlflow = stack.services()
        if s3.process.leader() is None or mlflow.process.leader() is None:
            print(f"# {PROG}: the stack under {stack.root} is not running; start it with 'make stack-up'",
                  file=sys.stderr)  # fmt: skip
        print(export_lines(stack.client_env(s3, mlflow)), end="")
        return ExitCode.OK
    states = stack.status()
    for st in states:
        state = ("running" if st.running else "stopped") + (", healthy" if st.healthy else "")
        pids = f" pids {' '.join(map(str, st.pids))}" if st.pids else ""
        print(f"{st.name:<10} {state:<17} {st.url}{pids}")
    return ExitCode.OK if all(st.healthy for st in states) else ExitCode.FAILURES


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stack command; returns the exit code (``difiisr.errors.ExitCode``)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        config = StackConfig.from_env(root=args.root, s3_port=args.s3_port, mlflow_port=args.mlflow_port)
        return int(_run(args.command, LocalStack(config), args.timeout))
    except StackError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
