"""End-to-end training of the tiny preset on CPU: loss falls, export loads, resume is exact, refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difiisr.inference.settings import InferenceSettings
from difiisr.io import read_image
from difiisr.training import ResumeError, train
from difiisr.training.checkpointing import read_marker
from difiisr.training.config import MlflowConfig, ModelSpec, OptimConfig, ValidationConfig


def test_loss_falls_exports_and_tracks_to_local_sqlite(
    tmp_path: Path, train_pairs: Path, val_pairs: Path, monkeypatch: pytest.MonkeyPatch, tiny_config
) -> None:
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the default tracking store is sqlite:///mlflow.db in the working directory
    # The shipped tiny preset starts at bicubic (residual prediction, zero output conv): its loss starts near its
    # floor and 24 steps cannot show learning. The reference spelling (x0 prediction from a random output layer)
    # starts far off, so a loss that falls shows the loop learns.
    cfg = tiny_config(
        tmp_path / "run",
        train_pairs,
        model=ModelSpec(
            preset="tiny", overrides=("diffusion.predict_type=xstart", "unet.zero_init_output=false")
        ),
        max_steps=24,
        log_every=4,
        optim=OptimConfig(lr=2e-3, warmup_steps=2, schedule="constant", grad_clip=1.0),
        mlflow=MlflowConfig(enabled=True, experiment="tiny-test"),
        validation=ValidationConfig(dir=str(val_pairs), n_images=2, sampler="onestep"),
    )
    result = train(cfg)
    assert result.status == "completed" and result.step == 24 and len(result.losses) == 24
    first, last = np.mean(result.losses[:6]), np.mean(result.losses[-6:])
    assert last < 0.6 * first, (first, last)

    # metrics.jsonl: one line per logged step, loss = mean of the window
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4, 8, 12, 16, 20, 24]
    assert lines[0]["loss"] == pytest.approx(np.mean(result.losses[:4]), rel=1e-6)
    assert all(r["samples_per_s"] > 0 and r["grad_norm"] > 0 for r in lines)

    # validation: metrics and a bicubic | SR | HR grid of the first pair
    assert set(result.validation) == {"val_psnr_y", "val_psnr_y_bicubic", "val_psnr_y_gain"}
    grid = read_image(tmp_path / "run" / "validation" / "grid_step_0000024.png")
    assert (grid.width, grid.height) == (3 * 64, 64)

    # the exported EMA folder loads into the Upscaler and super-resolves
    from difiisr.inference.upscaler import Upscaler
    from difiisr.models.bundle import load_model_folder

    bundle = load_model_folder(result.model_dir)
    assert bundle.meta["step"] == 24 and bundle.meta["dataset_md5"]
    upscaler = Upscaler.from_folder(result.model_dir, device="cpu")
    lr = read_image(val_pairs / "lr" / "im000.png").pixels
    sr = upscaler.upscale_array(lr, InferenceSettings(sampler="onestep", seed=0))
    assert sr.shape == (64, 64) and sr.dtype == np.uint8

    # tracking went to ./mlflow.db because MLFLOW_TRACKING_URI was unset
    assert (tmp_path / "mlflow.db").is_file()
    client = mlflow.MlflowClient(tracking_uri="sqlite:///mlflow.db")
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.002"
    assert run.data.tags["preset"] == "tiny"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [4, 8, 12, 16, 20, 24]


def test_resume_follows_the_uninterrupted_trajectory(tmp_path: Path, train_pairs: Path, tiny_config) -> None:
    # cosine LR, warm-up, grad accumulation 2 and an epoch boundary inside each half: everything must resume.
    base = tiny_config(tmp_path / "straight", train_pairs, max_steps=6, ema_decay=0.8)
    base = dataclasses.replace(
        base,
        optim=dataclasses.replace(base.optim, grad_accum=2),
        data=dataclasses.replace(base.data, batch_size=4),
    )
    straight = train(base)
    split_cfg = dataclasses.replace(base, out_dir=str(tmp_path / "split"))
    first = train(split_cfg, stop_after=3)
    assert first.status == "stopped" and first.step == 3 and first.model_dir is None
    assert first.checkpoint.name == "checkpoint_0"
    assert read_marker(first.checkpoint) == {
        "step": 3,
        "epoch": 1,
        "batch": 1,
        "samples": 12,
        "num_processes": 1,
        "seed": 7,
    }
    with pytest.raises(ResumeError, match="already holds checkpoints .*pass --resume to continue"):
        train(split_cfg)
    second = train(split_cfg, resume=True)
    assert second.start_step == 3 and second.step == 6
    assert second.checkpoint.name == "checkpoint_1"  # Accelerate's iteration advanced past the loaded one

    torch.testing.assert_close(
        torch.tensor(first.losses + second.losses), torch.tensor(straight.losses), rtol=1e-6, atol=1e-7
    )
    a = load_file(str(straight.model_dir / "unet.safetensors"))
    b = load_file(str(second.model_dir / "unet.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)
    ca = load_file(str(straight.checkpoint / "model.safetensors"))
    cb = load_file(str(second.checkpoint / "model.safetensors"))
    for key in ca:
        torch.testing.assert_close(ca[key], cb[key], rtol=1e-6, atol=1e-7)


def test_resume_is_exact_with_dropout_without_saved_rng_state(
    tmp_path: Path, train_pairs: Path, tiny_config
) -> None:
    # dropout draws from the global RNG; checkpoints store no RNG state, so the loop reseeds it per micro-step
    cfg = tiny_config(tmp_path / "straight", train_pairs, max_steps=3)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, overrides=("unet.dropout=0.3",)))
    straight = train(cfg)
    split = dataclasses.replace(cfg, out_dir=str(tmp_path / "split"))
    torch.manual_seed(12345)  # whatever the caller did to the global RNG before must not matter
    first = train(split, stop_after=1)
    torch.rand(7)
    second = train(split, resume=True)
    assert list(first.losses + second.losses) == list(straight.losses)


def test_bad_batch_and_crop_sizes_are_refused(tmp_path: Path, train_pairs: Path, tiny_config) -> None:
    from difiisr.training import TrainError

    cfg = tiny_config(tmp_path / "a", train_pairs)
    bad_batch = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, batch_size=3),
        optim=dataclasses.replace(cfg.optim, grad_accum=2),
    )
    with pytest.raises(
        TrainError, match=r"data.batch_size=3 \(global\) is not divisible by processes \(1\) x "
    ):
        train(bad_batch)
    bad_crop = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, gt_size=96))
    with pytest.raises(TrainError, match=r"data.gt_size=96: the pixel size 96 must be a multiple of 64"):
        train(bad_crop)


def test_online_mode_degrades_on_the_fly_and_resumes_exactly(
    tmp_path: Path, train_pairs: Path, tiny_config
) -> None:
    # online mode reads only HR images; the LR of every sample is seeded by its global position
    cfg = tiny_config(tmp_path / "straight", train_pairs / "hr", max_steps=2)
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, mode="online", degradation={"gray_noise_prob": 1.0})
    )
    straight = train(cfg)
    assert len(straight.losses) == 2 and all(np.isfinite(straight.losses))
    split = dataclasses.replace(cfg, out_dir=str(tmp_path / "split"))
    first = train(split, stop_after=1)
    second = train(split, resume=True)
    assert list(first.losses + second.losses) == pytest.approx(list(straight.losses), rel=1e-6)


def test_latent_preset_encodes_with_the_frozen_autoencoder(tmp_path: Path, tiny_config, make_pairs) -> None:
    # a small latent preset: the tiny UNet on 64x64 latents of 256x256 HR crops, a small random VQGAN f4
    import yaml
    from safetensors.torch import save_file

    from difiisr.inference.upscaler import Upscaler
    from difiisr.models import VQGANf4
    from difiisr.models.preset import load_preset

    doc = load_preset("tiny").to_dict()
    doc.update(name="tiny-latent", latent=True)
    doc["diffusion"]["latent"] = True
    doc["autoencoder"] = {"embed_dim": 3, "n_embed": 64, "ch": 32, "ch_mult": [1, 2, 4], "num_res_blocks": 1}
    preset_file = tmp_path / "tiny_latent.yaml"
    preset_file.write_text(yaml.safe_dump(doc))
    preset = load_preset(preset_file)
    torch.manual_seed(0)
    vae = VQGANf4(preset.autoencoder)
    save_file(vae.state_dict(), str(tmp_path / "vae.safetensors"))
    pairs = make_pairs(tmp_path / "pairs", 2, 256)

    cfg = tiny_config(tmp_path / "run", pairs, max_steps=2)
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(
            cfg.model, preset=str(preset_file), autoencoder_ckpt=str(tmp_path / "vae.safetensors")
        ),
        data=dataclasses.replace(cfg.data, gt_size=256, batch_size=2),
    )
    result = train(cfg)
    assert result.status == "completed" and all(np.isfinite(result.losses))
    assert (result.model_dir / "autoencoder.safetensors").is_file()
    upscaler = Upscaler.from_folder(result.model_dir, device="cpu")
    sr = upscaler.upscale_array(
        read_image(pairs / "lr" / "im000.png").pixels, InferenceSettings(sampler="onestep")
    )
    assert sr.shape == (256, 256)

    no_vae = dataclasses.replace(
        cfg, out_dir=str(tmp_path / "x"), model=dataclasses.replace(cfg.model, autoencoder_ckpt=None)
    )
    from difiisr.training import TrainError

    with pytest.raises(TrainError, match="is latent: set model.autoencoder_ckpt to the VQGAN f4 weights"):
        train(no_vae)


def test_old_checkpoints_are_pruned_to_keep_checkpoints(
    tmp_path: Path, train_pairs: Path, tiny_config
) -> None:
    from difiisr.training.checkpointing import list_checkpoints

    result = train(tiny_config(tmp_path / "run", train_pairs, max_steps=3, save_every=1, keep_checkpoints=2))
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint_1", "checkpoint_2"]
    assert read_marker(result.checkpoint)["step"] == 3


@pytest.mark.gpu
def test_bf16_training_on_cuda_records_peak_memory(tmp_path: Path, train_pairs: Path, tiny_config) -> None:
    result = train(tiny_config(tmp_path / "run", train_pairs, max_steps=3, mixed_precision="bf16"))
    assert all(np.isfinite(result.losses))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["peak_mem_gib"] > 0 for r in records)
