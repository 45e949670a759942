"""``difiisr serve``: a registered model answers REST requests with the venv *not* on PATH (issue 9 item 13).

Real MLflow tracking server (SQLite, artifacts proxied to SeaweedFS S3), the real ``difiisr`` entry point in a
subprocess, a real request. The model is the randomly initialised tiny preset of test_pyfunc_serving.py (its
helpers are reused), so the test checks plumbing and exactness, not quality.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from difiisr.cli.main import VERBS
from difiisr.errors import ExitCode
from difiisr.inference import Upscaler
from difiisr.inference.settings import InferenceSettings
from difiisr.registry.names import ALIAS_CHALLENGER
from difiisr.registry.register import register_run
from difiisr.stack import free_ports
from registry.test_pyfunc_serving import _logged_run, _lr_image, model_dir  # noqa: F401 - model_dir: fixture

VENV_BIN = Path(sys.executable).parent
DIFIISR = VENV_BIN / "difiisr"
START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 60


def _path_without_venv() -> str:
    """This PATH minus the venv's bin folder: a shell where the virtualenv is not activated."""
    keep = [
        p
        for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and Path(p).resolve() != VENV_BIN.resolve()
    ]
    return os.pathsep.join(keep or ["/usr/bin", "/bin"])


def _serve(*args: str, log: Path | None = None, timeout: float | None = None):  # noqa: ANN202
    """Run ``.venv/bin/difiisr serve ARGS`` (the real CLI) with the venv's bin folder off PATH."""
    env = {**os.environ, "PATH": _path_without_venv()}
    env.pop("DIFIISR_DEVICE", None)
    argv = [str(DIFIISR), "serve", *args]
    if log is None:  # runs to completion (refusals)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ping(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert proc.poll() is None, f"difiisr serve exited {proc.returncode}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, (
            f"no /ping answer in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}"
        )
        time.sleep(0.5)


def _alive(procs: list[psutil.Process]) -> list[int]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.mark.services
@pytest.mark.slow
def test_serve_answers_invocations_without_the_venv_on_path(mlflow_env, model_dir, tmp_path) -> None:  # noqa: F811
    # the condition of the defect: `mlflow models serve` starts `uvicorn` from PATH, and it is not there
    assert shutil.which("uvicorn", path=_path_without_venv()) is None
    name = f"difiisr-cli-serve-{uuid.uuid4().hex[:8]}"
    register_run(_logged_run(model_dir), name)
    (port,) = free_ports(1)
    log = tmp_path / "serve.log"
    proc = _serve(f"models:/{name}@{ALIAS_CHALLENGER}", "--port", str(port), "--device", "cpu", log=log)
    tree: list[psutil.Process] = []
    try:
        _wait_ping(proc, port, log)
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert tree, "the server runs as a child of difiisr serve"
        listening = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in {p.pid for p in tree}
        }
        assert listening == {("127.0.0.1", port)}  # the default binds loopback only

        lr = _lr_image()
        body = json.dumps({"inputs": lr[None].tolist(), "params": {"seed": 5}}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            got = np.asarray(json.loads(resp.read())["predictions"])
        assert got.shape == (1, 4 * lr.shape[0], 4 * lr.shape[1]) and got.min() >= 0 and got.max() <= 255
        want = Upscaler.from_folder(model_dir, device="cpu").upscale_array(lr, InferenceSettings(seed=5))
        np.testing.assert_array_equal(got.astype(np.uint8)[0], want)

        # SIGTERM to difiisr serve alone (not its group): it forwards it to the server's process group
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(STOP_TIMEOUT_S)
        assert code == 128 + signal.SIGTERM, log.read_text()[
            -3000:
        ]  # the server's status, as a shell shows it
        deadline = time.monotonic() + 10
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(tree) == [], "a server process outlived difiisr serve"
        assert "serving models:/" in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for p in tree:  # never leave a server behind, even when an assertion failed
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


@pytest.mark.services
def test_serve_refuses_unknown_model_and_missing_folder_up_front(mlflow_env, tmp_path) -> None:
    missing = _serve("models:/difiisr-no-such-model@champion", "--device", "cpu", timeout=120)
    assert missing.returncode == ExitCode.USAGE, missing.stderr
    assert "models:/difiisr-no-such-model@champion: not found in the registry at http://127.0.0.1:" in (
        missing.stderr
    )
    assert "Traceback" not in missing.stderr
    folder = _serve(str(tmp_path), "--device", "cpu", timeout=120)
    assert folder.returncode == ExitCode.USAGE
    assert f"{tmp_path}: not an MLflow model folder (no MLmodel file)" in folder.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of cuda where there is none")
def test_serve_refuses_cuda_without_cuda_naming_the_flag(tmp_path) -> None:
    result = _serve(str(tmp_path), "--device", "cuda", timeout=120)
    assert result.returncode == ExitCode.USAGE
    assert (
        "--device / DIFIISR_DEVICE: device 'cuda' requested but CUDA is not available here" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_serve_is_a_verb_documented_in_help(repo_root: Path) -> None:
    assert VERBS["serve"][0] == "difiisr.cli.serve"
    top = subprocess.run([str(DIFIISR), "--help"], capture_output=True, text=True, timeout=60, check=True)
    assert "  serve " in top.stdout
    verb = subprocess.run(
        [str(DIFIISR), "serve", "--help"], capture_output=True, text=True, timeout=120, check=True
    )
    for needle in ("DIFIISR_DEVICE", "--device {auto,cpu,cuda}", "default 127.0.0.1", "--workers", "128+N"):
        assert needle in verb.stdout, needle
    dry = subprocess.run(
        ["make", "-n", "-C", str(repo_root), "serve", "MODEL=models:/difiisr-x4@champion"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert ".venv/bin/difiisr serve models:/difiisr-x4@champion" in dry.stdout
