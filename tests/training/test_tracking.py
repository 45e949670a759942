"""MLflow tracking against a real tracking server (SQLite backend, artifacts proxied to SeaweedFS S3)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from difiisr.training import dataset_md5, train
from difiisr.training.config import MlflowConfig, ValidationConfig
from difiisr.training.tracking import DEFAULT_TRACKING_URI, code_version, tracking_uri


def test_tracking_uri_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == DEFAULT_TRACKING_URI == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri() == "http://127.0.0.1:5999"


@pytest.mark.services
@pytest.mark.slow
def test_run_on_tracking_server_has_params_metrics_tags_grid_and_weights(
    mlflow_env, tmp_path: Path, train_pairs: Path, val_pairs: Path, tiny_config
) -> None:
    import mlflow

    from difiisr.inference.upscaler import Upscaler

    cfg = tiny_config(
        tmp_path / "run",
        train_pairs,
        max_steps=4,
        val_every=2,
        mlflow=MlflowConfig(enabled=True, experiment="train-server-test", run_name="tiny-server"),
        validation=ValidationConfig(dir=str(val_pairs), n_images=1, sampler="onestep"),
    )
    first = train(cfg, stop_after=2)
    result = train(cfg, resume=True)
    assert result.mlflow_run_id == first.mlflow_run_id  # the resumed run continues the same MLflow run

    client = mlflow.MlflowClient(tracking_uri=mlflow_env.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-server"
    params = run.data.params
    assert (
        params["optim.lr"] == "0.001"
        and params["data.batch_size"] == "4"
        and params["model.preset"] == "tiny"
    )
    assert params["num_processes"] == "1" and params["validation.dir"] == str(val_pairs)
    tags = run.data.tags
    assert tags["dataset.md5"] == dataset_md5(train_pairs)
    assert tags["dataset.name"] == train_pairs.name
    assert tags["validation.md5"] == dataset_md5(val_pairs)
    assert tags["code_version"] == code_version() and tags["preset"] == "tiny"

    for key in ("loss", "lr", "grad_norm", "samples_per_s"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3, 4], key
    lr_hist = [m.value for m in client.get_metric_history(run.info.run_id, "lr")]
    assert lr_hist[:2] == pytest.approx([5e-4, 1e-3])  # warm-up over 2 steps
    for key in ("val_psnr_y", "val_psnr_y_bicubic", "val_psnr_y_gain"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [2, 4], key

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "validation")}
    assert artifacts == {"validation/grid_step_0000002.png", "validation/grid_step_0000004.png"}
    local = Path(client.download_artifacts(run.info.run_id, "model_folder", str(tmp_path / "download")))
    assert {p.name for p in local.iterdir()} == {"model.yaml", "unet.safetensors"}
    assert (local / "unet.safetensors").read_bytes() == (result.model_dir / "unet.safetensors").read_bytes()
    Upscaler.from_folder(local, device="cpu")


def test_disabled_tracking_writes_no_run_record(tmp_path: Path, train_pairs: Path, tiny_config) -> None:
    cfg = tiny_config(tmp_path / "run", train_pairs, max_steps=1)
    result = train(dataclasses.replace(cfg, mlflow=MlflowConfig(enabled=False)))
    assert result.mlflow_run_id is None
    assert not (tmp_path / "run" / "mlflow_run.json").exists()
