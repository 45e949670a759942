"""Guided sampling in the shared engine: scale 0 is bit-identical to unguided, guidance lowers the LR error (pixel
and latent presets, tiled), the differentiable decode, and the CLI flags reaching the sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from difiisr.cli.main import main
from difiisr.degradation.bicubic import bicubic_downsample_tensor
from difiisr.inference.settings import InferenceSettings
from difiisr.inference.upscaler import Upscaler
from difiisr.io import read_image, write_image
from difiisr.models.bundle import save_model_folder
from difiisr.models.conditioning import Conditioner
from difiisr.models.preset import load_preset

UNGUIDED = InferenceSettings(sampler="ddim", seed=2, tile=None)
GUIDED = UNGUIDED.replace(guidance="lr-consistency", guidance_scale=4.0)


# the shipped tiny preset starts from a zero output layer (x0_hat = z_y whatever z_t): random nets need it off
TINY = ["unet.zero_init_output=false"]


@pytest.fixture(scope="module")
def upscaler() -> Upscaler:
    return Upscaler.from_random(load_preset("tiny", TINY), seed=0, device="cpu")


@pytest.fixture(scope="module")
def lr() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 16, 20, generator=g) * 2 - 1


def lr_error(sr: torch.Tensor, y: torch.Tensor) -> float:
    return float((bicubic_downsample_tensor(sr, 4) - y).pow(2).sum())


SPACES = pytest.mark.parametrize("space", ["x0", "xt"])
SAMPLERS = pytest.mark.parametrize("sampler", ["ddim", "ancestral"])


@SAMPLERS
@SPACES
def test_scale_zero_is_bit_identical_to_unguided(
    upscaler: Upscaler, lr: torch.Tensor, sampler: str, space: str
) -> None:
    plain = upscaler.upscale_tensor(lr, UNGUIDED.replace(sampler=sampler))
    zero = upscaler.upscale_tensor(
        lr, GUIDED.replace(sampler=sampler, guidance_scale=0.0, guidance_space=space)
    )
    assert torch.equal(plain, zero)


@SAMPLERS
@SPACES
def test_guidance_lowers_the_lr_consistency_error(
    upscaler: Upscaler, lr: torch.Tensor, sampler: str, space: str
) -> None:
    settings = GUIDED.replace(sampler=sampler, guidance_space=space)
    plain = upscaler.upscale_tensor(lr, UNGUIDED.replace(sampler=sampler))
    guided = upscaler.upscale_tensor(lr, settings)
    assert guided.shape == plain.shape and not torch.equal(guided, plain)
    assert lr_error(guided, lr) < lr_error(plain, lr)
    # each image is guided by its own LR only: alone it gets the same output as in the batch
    alone = upscaler.upscale_tensor(lr[1:], settings)
    torch.testing.assert_close(alone, guided[1:], rtol=0, atol=1e-5)


def test_estimate_space_guidance_moves_a_model_that_starts_at_bicubic(lr: torch.Tensor) -> None:
    """The shipped tiny preset before training: x0_hat = bicubic(y) whatever z_t is. z_t guidance cannot change
    its output; estimate-space guidance (the default, scale 8) pulls A(SR) to the LR."""
    at_bicubic = Upscaler.from_random(load_preset("tiny"), seed=0, device="cpu")
    plain = at_bicubic.upscale_tensor(lr, UNGUIDED)
    in_xt = at_bicubic.upscale_tensor(lr, UNGUIDED.replace(guidance="lr-consistency", guidance_space="xt"))
    in_x0 = at_bicubic.upscale_tensor(lr, UNGUIDED.replace(guidance="lr-consistency"))
    assert torch.equal(in_xt, plain)
    assert lr_error(in_x0, lr) < 0.5 * lr_error(plain, lr), (lr_error(plain, lr), lr_error(in_x0, lr))


def test_tiled_guidance_runs_per_tile_and_lowers_the_error(upscaler: Upscaler, lr: torch.Tensor) -> None:
    tiled = GUIDED.replace(tile=16, tile_overlap=4, batch=3, guidance_steps=2, guidance_schedule="linear")
    plain = upscaler.upscale_tensor(lr, UNGUIDED.replace(tile=16, tile_overlap=4, batch=3))
    guided = upscaler.upscale_tensor(lr, tiled)
    assert lr_error(guided, lr) < lr_error(plain, lr)


def test_guidance_with_the_spectral_prior_runs_on_tiles(upscaler: Upscaler, lr: torch.Tensor) -> None:
    # tiles are at least the size multiple (16 LR pixels for tiny), the smallest LR the prior can fit
    out = upscaler.upscale_tensor(lr, GUIDED.replace(guidance_spectral=0.01, tile=16, tile_overlap=4))
    assert out.shape == (2, 3, 64, 80) and torch.isfinite(out).all()


@pytest.fixture(scope="module")
def latent_upscaler(tmp_path_factory: pytest.TempPathFactory) -> Upscaler:
    """The tiny UNet in the latent space of a small random VQGAN f4 (x4: latent = LR size)."""
    doc = load_preset("tiny", TINY).to_dict()
    doc.update(name="tiny-latent", latent=True)
    doc["diffusion"]["latent"] = True
    doc["autoencoder"] = {"embed_dim": 3, "n_embed": 64, "ch": 32, "ch_mult": [1, 2, 4], "num_res_blocks": 1}
    path = tmp_path_factory.mktemp("preset") / "tiny_latent.yaml"
    path.write_text(yaml.safe_dump(doc))
    return Upscaler.from_random(path, seed=0, device="cpu")


def test_differentiable_decode_equals_decode_and_checkpointing_keeps_the_gradient(
    latent_upscaler: Upscaler,
) -> None:
    conditioner: Conditioner = latent_upscaler.conditioner
    z = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(
            conditioner.decode_differentiable(z), conditioner.decode(z), rtol=1e-5, atol=1e-5
        )
    grads = []
    for checkpoint in (False, True):
        leaf = z.clone().requires_grad_(True)
        conditioner.decode_differentiable(leaf, checkpoint=checkpoint).pow(2).sum().backward()
        grads.append(leaf.grad)
    assert grads[0].abs().sum() > 0  # the straight-through quantiser lets the gradient reach z
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_latent_guidance_through_the_decoder(latent_upscaler: Upscaler, lr: torch.Tensor) -> None:
    plain = latent_upscaler.upscale_tensor(lr[:1], UNGUIDED)
    guided = latent_upscaler.upscale_tensor(lr[:1], GUIDED.replace(guidance_checkpoint=True))
    assert lr_error(guided, lr[:1]) < lr_error(plain, lr[:1])


def test_cli_guidance_flags_reach_the_sampler(
    upscaler: Upscaler, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import difiisr.inference.upscaler as engine

    model_dir = save_model_folder(tmp_path / "model", upscaler.preset, upscaler.unet.state_dict())
    pixels = np.random.default_rng(4).integers(0, 256, (16, 20), dtype=np.uint8)
    write_image(tmp_path / "in" / "a.png", pixels)

    calls: list[tuple[str, object]] = []
    real = dict(engine.SAMPLERS)

    class Spy:
        def __init__(self, name: str) -> None:
            self.name = name

        def __getattr__(self, attr: str) -> object:
            return getattr(real[self.name], attr)

        def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
            calls.append((self.name, kwargs.get("guidance") or kwargs.get("x0_guidance")))
            return real[self.name](*args, **kwargs)

    monkeypatch.setattr(engine, "SAMPLERS", {name: Spy(name) for name in real})
    flags = ["--sampler", "ancestral", "--seed", "3", "--tile", "0", "--guidance", "lr-consistency",
             "--guidance-scale", "4", "--guidance-steps", "2", "--guidance-schedule", "eta", "--device", "cpu",
             "--no-progress"]  # fmt: skip
    assert (
        main(
            [
                "upscale",
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / "out"),
                "--model",
                str(model_dir),
                *flags,
            ]
        )
        == 0
    )
    assert [name for name, _ in calls] == ["ancestral"] and callable(calls[0][1])

    settings = InferenceSettings(
        sampler="ancestral", seed=3, tile=None, guidance="lr-consistency", guidance_scale=4.0, guidance_steps=2,
        guidance_schedule="eta",
    )  # fmt: skip
    got = read_image(tmp_path / "out" / "a.png").pixels
    assert np.array_equal(got, upscaler.upscale_array(pixels, settings))
    assert not np.array_equal(got, upscaler.upscale_array(pixels, settings.replace(guidance_scale=0.0)))
    text = Image.open(tmp_path / "out" / "a.png").text
    assert text["inference.guidance"] == "lr-consistency" and text["inference.guidance_scale"] == "4.0"
    assert InferenceSettings.from_record(text) == settings

    calls.clear()
    with pytest.raises(SystemExit):  # argparse refuses an unknown schedule before any work
        main(["upscale", str(tmp_path / "in"), "--out", str(tmp_path / "o2"), "--model", str(model_dir),
              "--guidance-schedule", "cosine"])  # fmt: skip
    assert (
        main(
            [
                "upscale",
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / "o3"),
                "--model",
                str(model_dir),
                "--guidance",
                "lr-consistency",
                "--device",
                "cpu",
            ]
        )
        != 0
    )  # onestep + guidance: usage error
    assert calls == []


def test_pyfunc_params_carry_the_guidance(upscaler: Upscaler, tmp_path: Path) -> None:
    """The registered model's params schema takes the guidance fields (string, double, long, boolean)."""
    import mlflow.pyfunc

    from difiisr.registry.pyfunc import MODEL_CODE, PYFUNC_ARTIFACT_KEY, signature_for

    model_dir = save_model_folder(tmp_path / "model", upscaler.preset, upscaler.unet.state_dict())
    saved = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(
        str(saved),
        python_model=str(MODEL_CODE),
        artifacts={PYFUNC_ARTIFACT_KEY: str(model_dir)},
        signature=signature_for(1),
    )
    settings = InferenceSettings(
        sampler="ddim", tile=None, guidance="lr-consistency", guidance_scale=4.0, guidance_steps=2,
        guidance_checkpoint=True,
    )  # fmt: skip
    pixels = np.random.default_rng(5).integers(0, 256, (1, 16, 16), dtype=np.uint8)
    served = mlflow.pyfunc.load_model(str(saved))
    got = np.asarray(served.predict(pixels, params=settings.to_params()))
    assert np.array_equal(got[0], upscaler.upscale_array(pixels[0], settings))
    unguided = np.asarray(served.predict(pixels, params=settings.replace(guidance_scale=0.0).to_params()))
    assert not np.array_equal(got, unguided)
