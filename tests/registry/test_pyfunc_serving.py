"""The registered pyfunc model: load by alias, predict like the Upscaler, and serve over REST.

Real MLflow tracking server (SQLite, artifacts proxied to SeaweedFS S3) and a real `mlflow models serve` process.
The model is a randomly initialised tiny preset, so the test checks plumbing and exactness, not quality.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from difiisr.inference import Upscaler
from difiisr.inference.settings import InferenceSettings
from difiisr.models.bundle import save_model_folder
from difiisr.models.preset import load_preset
from difiisr.models.swin_unet import SwinUNet
from difiisr.registry.names import ALIAS_CHALLENGER, RegistryError
from difiisr.registry.register import register_run

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    preset = load_preset("tiny")
    torch.manual_seed(0)
    net = SwinUNet(preset.unet)
    return save_model_folder(tmp_path_factory.mktemp("model"), preset, net.state_dict(), meta={"step": 0})


def _logged_run(model_dir: Path, *, evaluated: bool = True) -> str:
    """A run shaped like `difiisr train` + `difiisr evaluate` leave it."""
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), artifact_path="model_folder")
        mlflow.set_tags({"dataset.md5": "d" * 32, "code_version": "test"})
        if evaluated:
            mlflow.log_metrics({"eval/psnr_y": 30.0, "eval/bicubic_psnr_y": 28.0, "eval/ssim_y": 0.8})
            mlflow.set_tag("eval_md5", "e" * 32)
    return run.info.run_id


def _lr_image() -> np.ndarray:
    yy, xx = np.mgrid[0:24, 0:20]
    return (((np.sin(xx / 3.0) + np.cos(yy / 4.0)) * 60 + 128).clip(0, 255)).astype(np.uint8)


def test_register_tags_and_pyfunc_matches_upscaler(mlflow_env, model_dir):
    name = f"difiisr-test-{uuid.uuid4().hex[:8]}"
    run_id = _logged_run(model_dir)
    mv = register_run(run_id, name)
    assert str(register_run(run_id, name).version) == str(mv.version)  # a rerun reuses the version
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, ALIAS_CHALLENGER).version) == str(mv.version)
    tags = mv.tags
    assert tags["eval_md5"] == "e" * 32 and tags["dataset_md5"] == "d" * 32
    assert float(tags["metric.psnr_y"]) == 30.0 and float(tags["metric.bicubic_psnr_y"]) == 28.0
    assert tags["preset"] == "tiny" and len(tags["config_hash"]) == 16 and tags["code_version"] == "test"

    model = mlflow.pyfunc.load_model(f"models:/{name}@{ALIAS_CHALLENGER}")
    sig = model.metadata.signature
    assert sig.inputs.inputs[0].shape == (-1, -1, -1) and str(sig.inputs.inputs[0].type) == "uint8"
    assert {p.name for p in sig.params.params} >= {"sampler", "steps", "seed", "tile"}
    lr = _lr_image()
    got = model.predict(lr[None], params={"seed": 3, "sampler": "ddim"})
    want = Upscaler.from_folder(model_dir, device="cpu").upscale_array(
        lr, InferenceSettings(sampler="ddim", seed=3)
    )
    assert got.shape == (1, 96, 80) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[0], want)


def test_register_refuses_unevaluated_run(mlflow_env, model_dir):
    run_id = _logged_run(model_dir, evaluated=False)
    with pytest.raises(RegistryError, match=f"run {run_id} has not been evaluated"):
        register_run(run_id, "difiisr-never")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_answers_invocations(mlflow_env, model_dir, tmp_path):
    name = f"difiisr-serve-{uuid.uuid4().hex[:8]}"
    register_run(_logged_run(model_dir), name)
    port = _free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [mlflow_bin, "models", "serve", "-m", f"models:/{name}@{ALIAS_CHALLENGER}", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # as in an activated virtualenv: the scoring server is started as `uvicorn` from PATH
        env={**os.environ, "DIFIISR_DEVICE": "cpu", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (
                "server did not come up: " + (tmp_path / "serve.log").read_text()[-3000:]
            )
            time.sleep(0.5)
        lr = _lr_image()
        body = json.dumps({"inputs": lr[None].tolist(), "params": {"seed": 5}}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.loads(r.read())
        got = np.asarray(answer["predictions"], dtype=np.uint8)
        want = Upscaler.from_folder(model_dir, device="cpu").upscale_array(lr, InferenceSettings(seed=5))
        assert got.shape == (1, 96, 80)
        np.testing.assert_array_equal(got[0], want)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def test_model_folder_resolves_run_and_registry_uris(mlflow_env, model_dir, tmp_path):
    from difiisr.registry.resolve import ModelReferenceError, model_folder

    name = f"difiisr-resolve-{uuid.uuid4().hex[:8]}"
    run_id = _logged_run(model_dir)
    register_run(run_id, name)
    want = (model_dir / "unet.safetensors").read_bytes()
    for i, ref in enumerate(
        [f"runs:/{run_id}/model_folder", f"models:/{name}@{ALIAS_CHALLENGER}", f"models:/{name}/1"]
    ):
        got = model_folder(ref, tmp_path / str(i))
        assert (got / "model.yaml").is_file() and (got / "unet.safetensors").read_bytes() == want, ref
    assert model_folder(model_dir, tmp_path) == model_dir
    with pytest.raises(ModelReferenceError, match="no such folder and not an MLflow URI"):
        model_folder(tmp_path / "missing", tmp_path)
    with pytest.raises(ModelReferenceError, match="not found in the registry"):
        model_folder(f"models:/{name}@nope", tmp_path / "x")
    with pytest.raises(ModelReferenceError, match="cannot download from MLflow"):
        model_folder(f"runs:/{run_id}/no_such_artifact", tmp_path / "y")
