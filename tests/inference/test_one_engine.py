"""One engine: the same LR frames through ``difiisr upscale``, ``difiisr evaluate`` (its SR images) and the MLflow
pyfunc, with the same settings, give byte-identical outputs (issue 10).

Every settings field is set away from its default (ancestral sampler, 2 of 4 steps, seed, tiling with overlap,
batch) so a path that ignored or re-defaulted one of them would differ.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest

from difiisr.cli.main import main
from difiisr.data.pairs import HR_DIR, LR_DIR
from difiisr.inference.settings import InferenceSettings
from difiisr.inference.upscaler import Upscaler
from difiisr.io import read_image, write_image
from difiisr.models.bundle import save_model_folder
from difiisr.models.preset import load_preset
from difiisr.registry.pyfunc import MODEL_CODE, PYFUNC_ARTIFACT_KEY, signature_for

SETTINGS = InferenceSettings(sampler="ancestral", steps=2, seed=7, tile=16, tile_overlap=4, batch=2)
FLAGS = ["--sampler", "ancestral", "--steps", "2", "--seed", "7", "--tile", "16", "--tile-overlap", "4",
         "--batch", "2", "--device", "cpu", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    preset = load_preset("tiny")
    ups = Upscaler.from_random(preset, seed=3, device="cpu")
    return save_model_folder(tmp_path_factory.mktemp("model"), preset, ups.unet.state_dict())


def test_upscale_evaluate_and_pyfunc_agree_byte_for_byte(model_dir: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pairs = tmp_path / "pairs"
    names = ["a.png", "b.png"]
    for name, (h, w) in zip(names, [(24, 20), (16, 32)], strict=True):
        lr = rng.integers(0, 256, (h, w), dtype=np.uint8)
        write_image(pairs / LR_DIR / name, lr)
        write_image(pairs / HR_DIR / name, np.kron(lr, np.ones((4, 4), np.uint8)))

    assert (
        main(
            ["upscale", str(pairs / LR_DIR), "--out", str(tmp_path / "up"), "--model", str(model_dir), *FLAGS]
        )
        == 0
    )
    assert main(["evaluate", "--model", str(model_dir), "--pairs", str(pairs), "--out", str(tmp_path / "ev"),
                 "--no-mlflow", *FLAGS]) == 0  # fmt: skip

    saved = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(
        str(saved),
        python_model=str(MODEL_CODE),
        artifacts={PYFUNC_ARTIFACT_KEY: str(model_dir)},
        signature=signature_for(1),
    )
    served = mlflow.pyfunc.load_model(str(saved))
    for name in names:
        lr = read_image(pairs / LR_DIR / name).pixels
        via_cli = read_image(tmp_path / "up" / name).pixels
        via_eval = read_image(tmp_path / "ev" / "sr" / name).pixels
        via_pyfunc = np.asarray(served.predict(lr[None], params=SETTINGS.to_params()))[0]
        assert via_cli.shape == (lr.shape[0] * 4, lr.shape[1] * 4)
        np.testing.assert_array_equal(via_cli, via_eval, err_msg=name)
        np.testing.assert_array_equal(via_cli, via_pyfunc, err_msg=name)
    # and the settings really matter: the default settings give other pixels
    default = Upscaler.from_folder(model_dir, device="cpu").upscale_array(
        read_image(pairs / LR_DIR / "a.png").pixels
    )
    assert not np.array_equal(default, read_image(tmp_path / "up" / "a.png").pixels)
