"""Training-time guidance losses: config, VGG from a local file only (one warning without), gradients against
finite differences, the latent sub-crop, and each term logged separately to metrics.jsonl and MLflow."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch.autograd import gradcheck

from difiisr.config import ConfigError, from_mapping
from difiisr.diffusion.guidance import log_amplitude_distance
from difiisr.models import VQGANf4
from difiisr.models.conditioning import Conditioner
from difiisr.models.preset import load_preset
from difiisr.training import load_train_config, train
from difiisr.training.config import (
    LossesConfig,
    MlflowConfig,
    PerceptualLossConfig,
    SpectralLossConfig,
    TrainConfig,
)
from difiisr.training.losses import (
    TrainingLosses,
    VGGFeatures,
    load_vgg,
    perceptual_distance,
    random_crop_box,
    vgg_layer_names,
)


def vgg_file(path: Path, convs: int = 2, seed: int = 0) -> Path:
    """A local vgg16 weights file holding only the first ``convs`` convolutions (enough for relu1_2)."""
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(seed)
    features = make_layers(cfgs["D"])
    state = {f"features.{k}": v for k, v in features.state_dict().items() if int(k.split(".")[0]) < 2 * convs}
    save_file(state, str(path))
    return path


# ---------------------------------------------------------------------------------------------- config


def test_losses_section_is_optional_typed_and_off_by_default() -> None:
    cfg = TrainConfig()
    assert cfg.losses.spectral.weight == 0 and cfg.losses.perceptual.weight == 0
    assert cfg.losses.decode_crop == 32 and cfg.to_dict()["losses"]["perceptual"]["arch"] == "vgg16"
    built = from_mapping(TrainConfig, {"losses": {"spectral": {"weight": 0.1, "radial_power": 1}}})
    assert built.losses.spectral == SpectralLossConfig(weight=0.1, radial_power=1.0)
    for preset in ("train_tiny", "train_x4"):  # the shipped recipes carry the section, all weights 0
        assert load_train_config(preset).losses == LossesConfig()
    with pytest.raises(ConfigError, match=r"losses.spectral.weight=-1.0: must be >= 0"):
        from_mapping(TrainConfig, {"losses": {"spectral": {"weight": -1.0}}})
    with pytest.raises(ConfigError, match="losses.decode_crop=0"):
        from_mapping(TrainConfig, {"losses": {"decode_crop": 0}})
    with pytest.raises(ConfigError, match="losses.perceptual"):
        from_mapping(TrainConfig, {"losses": {"perceptual": {"weigth": 1.0}}})


def test_vgg_layer_names_follow_torchvision_features() -> None:
    from torchvision.models import vgg16

    names16 = vgg_layer_names("vgg16")
    assert (names16["relu1_2"], names16["relu2_2"], names16["relu3_3"], names16["relu4_3"], names16["relu5_3"]) == (
        3, 8, 15, 22, 29,
    )  # fmt: skip
    names19 = vgg_layer_names("vgg19")
    assert (names19["relu3_4"], names19["relu4_4"], names19["relu5_4"]) == (17, 26, 35)
    tv = vgg16(weights=None).features  # architecture only, nothing is downloaded
    assert all(isinstance(tv[i], torch.nn.ReLU) for i in names16.values())


def test_missing_vgg_weights_skip_the_term_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conditioner = Conditioner(load_preset("tiny"), None)
    for weights_file in (None, str(tmp_path / "absent.pth")):
        caplog.clear()
        cfg = LossesConfig(perceptual=PerceptualLossConfig(weight=1.0, weights_file=weights_file))
        with caplog.at_level(logging.WARNING, logger="difiisr.training.losses"):
            assert TrainingLosses.build(cfg, conditioner, "cpu") is None
            assert TrainingLosses.build(cfg, conditioner, "cpu", warn=False) is None
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "perceptual loss skipped" in warnings[0].getMessage()
        assert "never downloads" in warnings[0].getMessage()
    # with the spectral term on, the run keeps that one and drops the perceptual one
    cfg = LossesConfig(spectral=SpectralLossConfig(weight=1.0), perceptual=PerceptualLossConfig(weight=1.0))
    losses = TrainingLosses.build(cfg, conditioner, "cpu", warn=False)
    assert losses is not None and losses.names == ("loss_spectral",)


def test_vgg_from_a_local_file_and_bad_files(tmp_path: Path) -> None:
    path = vgg_file(tmp_path / "vgg.safetensors")
    net = load_vgg(PerceptualLossConfig(weight=1.0, weights_file=str(path), layers=("relu1_2",)))
    assert isinstance(net, VGGFeatures) and len(net.features) == 4
    assert not any(p.requires_grad for p in net.parameters())
    with pytest.raises(ConfigError, match=r"lack 2 tensors of vgg16 features.*give a torchvision vgg16"):
        load_vgg(PerceptualLossConfig(weight=1.0, weights_file=str(path), layers=("relu2_1",)))
    with pytest.raises(ConfigError, match=r"relu9_9; vgg16 has relu1_1, relu1_2"):
        load_vgg(PerceptualLossConfig(weight=1.0, weights_file=str(path), layers=("relu9_9",)))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.pth"):
        load_vgg(PerceptualLossConfig(weight=1.0, weights_file=str(tmp_path / "junk.pth")))


# ---------------------------------------------------------------------------------------------- gradients


def test_perceptual_gradient_matches_finite_differences(tmp_path: Path) -> None:
    path = vgg_file(tmp_path / "vgg.safetensors")
    net = load_vgg(PerceptualLossConfig(weight=1.0, weights_file=str(path), layers=("relu1_1", "relu1_2")))
    assert net is not None
    net = net.double()
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(1, 3, 6, 6, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    ref = torch.rand(1, 3, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
    assert gradcheck(lambda v: perceptual_distance(net, v, ref), (x,), eps=1e-6, atol=1e-6)
    assert float(perceptual_distance(net, ref, ref)) == 0.0


def test_spectral_term_on_a_latent_sub_crop_reaches_only_that_crop(tmp_path: Path) -> None:
    preset = load_preset("tiny")
    doc = preset.to_dict()
    doc.update(name="tiny-latent", latent=True)
    doc["diffusion"]["latent"] = True
    doc["autoencoder"] = {"embed_dim": 3, "n_embed": 64, "ch": 32, "ch_mult": [1, 2, 4], "num_res_blocks": 1}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    latent = load_preset(tmp_path / "p.yaml")
    torch.manual_seed(0)
    conditioner = Conditioner(latent, VQGANf4(latent.autoencoder).eval().requires_grad_(False))
    cfg = LossesConfig(spectral=SpectralLossConfig(weight=2.0, radial_power=1.0), decode_crop=4)
    losses = TrainingLosses.build(cfg, conditioner, "cpu")
    assert losses is not None
    x0_hat = torch.randn(2, 3, 12, 10, requires_grad=True)
    hr = torch.rand(2, 3, 48, 40) * 2 - 1
    total, terms = losses.terms(x0_hat, hr, torch.Generator().manual_seed(5))
    top, left, h, w = random_crop_box(12, 10, 4, torch.Generator().manual_seed(5))
    assert (h, w) == (4, 4) and 0 <= top <= 8 and 0 <= left <= 6
    crop = x0_hat[..., top : top + 4, left : left + 4]
    expected = log_amplitude_distance(
        conditioner.decode_differentiable(crop), hr[..., 4 * top : 4 * top + 16, 4 * left : 4 * left + 16],
        radial_power=1.0,
    )  # fmt: skip
    torch.testing.assert_close(terms["loss_spectral"], expected)
    torch.testing.assert_close(total, 2.0 * expected)
    total.backward()
    grad = x0_hat.grad
    assert grad[..., top : top + 4, left : left + 4].abs().sum() > 0
    outside = grad.clone()
    outside[..., top : top + 4, left : left + 4] = 0
    assert outside.abs().sum() == 0


# ---------------------------------------------------------------------------------------------- in training


def test_each_term_is_logged_to_metrics_and_mlflow(
    tmp_path: Path, train_pairs: Path, tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    # an absolute store: MLflow caches stores by URI, so a relative sqlite:///mlflow.db would leak across tests
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    vgg = vgg_file(tmp_path / "vgg.safetensors")
    losses = LossesConfig(
        spectral=SpectralLossConfig(weight=0.5),
        perceptual=PerceptualLossConfig(weight=0.1, weights_file=str(vgg), layers=("relu1_2",)),
    )
    cfg = tiny_config(
        tmp_path / "run", train_pairs, max_steps=4, log_every=1, losses=losses,
        mlflow=MlflowConfig(enabled=True, experiment="losses-test"),
    )  # fmt: skip
    result = train(cfg)
    assert result.status == "completed"
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert {"loss_diffusion", "loss_spectral", "loss_perceptual"} <= set(r)
        assert r["loss_spectral"] > 0 and r["loss_perceptual"] > 0
        combined = r["loss_diffusion"] + 0.5 * r["loss_spectral"] + 0.1 * r["loss_perceptual"]
        assert r["loss"] == pytest.approx(combined, rel=1e-5)
    client = mlflow.MlflowClient(tracking_uri=uri)
    for name in ("loss_diffusion", "loss_spectral", "loss_perceptual"):
        assert [m.step for m in client.get_metric_history(result.mlflow_run_id, name)] == [1, 2, 3, 4], name

    # the same run without the losses logs only the diffusion loss, unchanged
    plain = train(dataclasses.replace(cfg, out_dir=str(tmp_path / "plain"), losses=LossesConfig(),
                                      mlflow=MlflowConfig(enabled=False)))  # fmt: skip
    first = json.loads((tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()[0])
    assert "loss_spectral" not in first and "loss_diffusion" not in first
    # step 1 (same init, data and noise) has the same diffusion loss; later steps differ by the extra gradients
    assert plain.losses[0] == pytest.approx(records[0]["loss_diffusion"], rel=1e-6)
    assert plain.losses[-1] != pytest.approx(records[-1]["loss_diffusion"], rel=1e-6)
