"""``difiisr serve MODEL_URI``: the REST endpoint of a registered model, without activating the virtualenv.

It runs ``mlflow models serve --env-manager local`` with this Python's ``bin`` folder first on ``PATH``
(MLflow starts the scoring server as ``uvicorn`` from ``PATH``, which fails with exit code 127 when the venv
is not activated). The server runs in its own process group. SIGINT and SIGTERM are forwarded to that group,
and the command exits with the server's exit status. The pyfunc reads the device from ``DIFIISR_DEVICE``,
which ``--device`` sets.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from difiisr.errors import DifiisrError, ExitCode, UsageError
from difiisr.registry.pyfunc import DEVICE_ENV
from difiisr.registry.resolve import URI_PREFIXES

logger = logging.getLogger(__name__)

#: The variable the registered pyfunc reads its torch device from (auto | cpu | cuda | cuda:N).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001
#: Seconds the server gets to stop after a forwarded SIGINT/SIGTERM before its process group is SIGKILLed.
STOP_TIMEOUT_S = 30.0

EPILOG = f"""\
device:
  The model runs on the device in ${DEVICE_ENV} (auto = CUDA when available, else CPU). --device sets it
  for the server; without --device an exported ${DEVICE_ENV} is used, else auto. --device cuda is refused
  up front when CUDA is not available.

environment:
  models:/ and runs:/ URIs are resolved through MLFLOW_TRACKING_URI (export it, or load the local stack:
  eval "$(python -m difiisr.stack env)"). The server is 'mlflow models serve --env-manager local', run with
  this Python's bin folder first on PATH, so no virtualenv needs to be activated.

request:
  POST http://HOST:PORT/invocations with JSON {{"inputs": [[[...]]], "params": {{"seed": 0}}}}: a uint8 batch
  (N,H,W) or (N,H,W,3); the answer {{"predictions": ...}} is uint8, x4 in height and width. GET /ping = health.

exit status:
  the server's exit code (128+N when it ended on signal N; Ctrl-C and SIGTERM are forwarded to it);
  {int(ExitCode.USAGE)} when the command line, model reference or device is refused before anything starts.
"""


class ServeError(UsageError):
    """``difiisr serve`` cannot start as asked (flag, model reference, device, installation); nothing started."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``difiisr serve``."""
    from difiisr.inference.settings import DEVICES

    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "model_uri",
        metavar="MODEL_URI",
        help="models:/difiisr-x4@champion, models:/NAME/VERSION, runs:/RUN_ID/model or a local MLflow model folder",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=None,
        help=f"sets {DEVICE_ENV} for the server (default: ${DEVICE_ENV} if set, else auto)",
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument("--timeout", type=int, default=60, help="seconds one request may take (default 60)")


def venv_bin() -> Path:
    """The folder of this Python's executables (the venv's ``bin``; not resolved through symlinks)."""
    return Path(sys.executable).parent


def server_env(base: Mapping[str, str], device: str, bin_dir: Path) -> dict[str, str]:
    """``base`` with ``bin_dir`` first on ``PATH`` and ``DIFIISR_DEVICE=device``."""
    path = base.get("PATH", "")
    return {**base, "PATH": f"{bin_dir}{os.pathsep}{path}" if path else str(bin_dir), DEVICE_ENV: device}


def serve_argv(model_uri: str, host: str, port: int, workers: int, timeout: int) -> list[str]:
    """The ``mlflow models serve`` command line, run with this Python (no ``mlflow`` script lookup)."""
    return [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
        "-h", host, "-p", str(port), "-w", str(workers), "-t", str(timeout),
    ]  # fmt: skip


def _check_flags(args: argparse.Namespace) -> None:
    if not 1 <= args.port <= 65535:
        raise ServeError(f"--port {args.port}: use a TCP port from 1 to 65535")
    if args.workers < 1:
        raise ServeError(f"--workers {args.workers}: use 1 or more")
    if args.timeout < 1:
        raise ServeError(f"--timeout {args.timeout}: use 1 second or more")


def _check_device(device: str) -> None:
    """Refuse a device the pyfunc could not use (e.g. cuda without CUDA), naming the flag and variable."""
    from difiisr.inference.upscaler import UpscaleError, resolve_device

    try:
        resolve_device(device)
    except UpscaleError as exc:
        raise ServeError(f"--device / {DEVICE_ENV}: {exc}") from None


def _check_model(uri: str) -> None:
    """Refuse a model reference that names nothing: a missing local folder, an unknown registered version."""
    if not uri.startswith(URI_PREFIXES):
        if not (Path(uri) / "MLmodel").is_file():
            raise ServeError(
                f"{uri}: not an MLflow model folder (no MLmodel file) and not a URI; pass a registered model "
                "such as models:/difiisr-x4@champion (see 'difiisr register')"
            )
        return
    if not uri.startswith("models:/"):
        return  # runs:/ and artifact URIs: MLflow resolves them when the server starts
    import mlflow
    from mlflow.exceptions import MlflowException

    name, at, alias = uri.removeprefix("models:/").partition("@")
    if not at:
        name, _, alias = name.partition("/")
    try:
        client = mlflow.MlflowClient()
        if at:
            client.get_model_version_by_alias(name, alias)
        elif alias.isdigit():
            client.get_model_version(name, alias)
        else:
            client.get_registered_model(name)
    except MlflowException as exc:
        raise ServeError(
            f"{uri}: not found in the registry at {mlflow.get_tracking_uri()} ({exc.message}); check the "
            "name, alias or version, and MLFLOW_TRACKING_URI"
        ) from None


def _announce_when_ready(uri: str, host: str, port: int) -> Callable[[], None]:
    """A tick for ``run_foreground`` that logs the endpoint once ``GET /ping`` first answers 200."""
    probe = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{probe}:{port}"
    ready = False

    def tick() -> None:
        nonlocal ready
        if ready:
            return
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=1) as resp:
                ready = resp.status == 200
        except (urllib.error.URLError, OSError):
            return
        if ready:
            logger.info(
                "serving %s at http://%s:%d/invocations (Ctrl-C or SIGTERM stops it)", uri, host, port
            )

    return tick


def run(args: argparse.Namespace) -> int:
    """Check the request, then run the server in the foreground; returns its exit status."""
    from difiisr.stack.process import run_foreground

    try:
        _check_flags(args)
        device = args.device or os.environ.get(DEVICE_ENV) or "auto"
        _check_device(device)
        bin_dir = venv_bin()
        env = server_env(os.environ, device, bin_dir)
        if shutil.which("uvicorn", path=env["PATH"]) is None:
            raise ServeError(
                f"uvicorn is not in {bin_dir} nor on PATH; install the pinned packages "
                "(make install, or pip install -c constraints.txt -e .)"
            )
        _check_model(args.model_uri)
    except DifiisrError as exc:
        print(f"difiisr serve: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    argv = serve_argv(args.model_uri, args.host, args.port, args.workers, args.timeout)
    logger.info("starting %s on %s:%d (%s=%s)", args.model_uri, args.host, args.port, DEVICE_ENV, device)
    try:
        return run_foreground(
            argv,
            env,
            stop_timeout=STOP_TIMEOUT_S,
            on_tick=_announce_when_ready(args.model_uri, args.host, args.port),
        )
    except DifiisrError as exc:  # a server process that survived SIGKILL: say which
        print(f"difiisr serve: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
