"""The evaluation driver, the evaluation-set md5, MLflow logging and the ``difiisr evaluate`` verb."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difiisr.cli.main import main
from difiisr.data.pairs import PairsError, dataset_md5, list_pairs
from difiisr.evaluation.baseline import bicubic_upscale
from difiisr.evaluation.evaluate import EvaluationError, evaluate_pairs, image_metrics, log_to_mlflow
from difiisr.evaluation.metrics import psnr_y, ssim_y
from difiisr.inference.settings import InferenceSettings
from difiisr.io import read_image

LR_H, LR_W = 24, 48  # HR 96x192: two 96x96 NIQE blocks, still tiny


def scene(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth synthetic thermal-like frame, (h,w) float in [0,1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 0.45 + 0.3 * np.sin(xx / (6.0 + seed)) * np.cos(yy / 8.0) + 0.15 * ((xx - 20 * seed) % 70 < 25)
    return np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)


def make_pairs(root: Path, n: int = 3, bit_depth: int = 8, lr_size: tuple[int, int] = (LR_H, LR_W)) -> Path:
    """Pairs layout: HR frames and LR = PIL bicubic /4 (the test protocol), identical names."""
    (root / "hr").mkdir(parents=True)
    (root / "lr").mkdir()
    lr_h, lr_w = lr_size
    for i in range(n):
        hr = scene(lr_h * 4, lr_w * 4, seed=i)
        if bit_depth == 8:
            hr_px = np.round(hr * 255).astype(np.uint8)
            lr_px = np.asarray(Image.fromarray(hr_px).resize((lr_w, lr_h), Image.Resampling.BICUBIC))
        else:
            hr_px = np.round(hr * 65535).astype(np.uint16)
            lr_f = Image.fromarray(hr_px.astype(np.float32)).resize((lr_w, lr_h), Image.Resampling.BICUBIC)
            lr_px = np.clip(np.rint(np.asarray(lr_f)), 0, 65535).astype(np.uint16)
        Image.fromarray(hr_px).save(root / "hr" / f"frame_{i:02d}.png")
        Image.fromarray(lr_px).save(root / "lr" / f"frame_{i:02d}.png")
    return root


def nearest_x4(lr: np.ndarray) -> np.ndarray:
    """A deliberately weak 'model': nearest-neighbour x4."""
    return np.repeat(np.repeat(lr, 4, axis=0), 4, axis=1)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    return make_pairs(tmp_path / "pairs")


# ---------------------------------------------------------------- driver


def test_driver_writes_rows_means_deltas_and_sr_images(pairs: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = evaluate_pairs(nearest_x4, pairs, out, name="nearest", crops=2, progress=False, meta={"seed": 3})

    names = [p.name for p in list_pairs(pairs)]
    rows = read_csv(out / "per_image.csv")
    assert list(rows[0]) == ["image", "method", "psnr_y", "ssim_y", "psnr", "ssim", "niqe"]
    assert [(r["image"], r["method"]) for r in rows] == [
        (n, m) for n in names for m in ("bicubic", "nearest")
    ]

    # Every CSV value is the metric of the files on disk (SR as saved, bicubic recomputed from the LR).
    for row in rows:
        hr = read_image(pairs / "hr" / row["image"]).pixels
        lr = read_image(pairs / "lr" / row["image"]).pixels
        if row["method"] == "nearest":
            sr = read_image(out / "sr" / row["image"]).pixels
            np.testing.assert_array_equal(sr, nearest_x4(lr))
        else:
            sr = bicubic_upscale(lr)
        expected = image_metrics(sr, hr)
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value, rel=1e-12, abs=1e-12), (row["image"], key)

    doc = json.loads((out / "aggregate.json").read_text())
    assert doc["n_images"] == 3 and doc["methods"] == ["bicubic", "nearest"]
    assert doc["dataset_md5"] == dataset_md5(pairs) == result.dataset_md5
    for method in ("bicubic", "nearest"):
        for key in ("psnr_y", "ssim_y", "psnr", "ssim", "niqe"):
            mean = np.mean([float(r[key]) for r in rows if r["method"] == method])
            assert doc["metrics"][method][key] == pytest.approx(mean, rel=1e-12)
            assert result.means[method][key] == pytest.approx(mean, rel=1e-12)
    for key in ("psnr_y", "ssim_y", "niqe"):
        delta = doc["metrics"]["nearest"][key] - doc["metrics"]["bicubic"][key]
        assert doc["delta_vs_bicubic"][key] == pytest.approx(delta, abs=1e-12)
    # Nearest-neighbour is worse than bicubic on smooth frames, and psnr_y - psnr is the grey-image constant.
    assert doc["delta_vs_bicubic"]["psnr_y"] < 0
    assert doc["metrics"]["bicubic"]["psnr_y"] - doc["metrics"]["bicubic"]["psnr"] == pytest.approx(
        20 * math.log10(255 / 219), abs=1e-9
    )
    assert "unrounded" in doc["conventions"]["psnr_y"] and "rounded" in doc["conventions"]["ssim_y"]
    assert doc["not_computed"]["lpips"].startswith("not computed: no weights")
    assert set(doc["not_computed"]) == {"lpips", "clipiqa", "musiq"}
    assert doc["meta"] == {"seed": 3}

    html = (out / "report.html").read_text()
    assert html.count("<img ") == 2 * 3  # crops=2 images x (bicubic | nearest | HR)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert result.model_means["psnr_y"] == pytest.approx(doc["metrics"]["nearest"]["psnr_y"])


def test_driver_without_a_model_evaluates_bicubic_alone(pairs: Path, tmp_path: Path) -> None:
    result = evaluate_pairs(None, pairs, tmp_path / "eval", progress=False)
    rows = read_csv(result.csv_path)
    assert [r["method"] for r in rows] == ["bicubic"] * 3
    assert result.methods == ("bicubic",) and result.deltas == {} and result.sr_dir is None
    assert not (tmp_path / "eval" / "sr").exists()
    doc = json.loads(result.json_path.read_text())
    assert doc["methods"] == ["bicubic"] and doc["delta_vs_bicubic"] == {}
    assert (tmp_path / "eval" / "report.html").read_text().count("<img ") == 3 * 2  # bicubic | HR


def test_perfect_model_gives_inf_psnr_written_as_null(pairs: Path, tmp_path: Path) -> None:
    hr_by_lr = {
        read_image(p.lr).pixels.tobytes(): read_image(p.hr).pixels for p in list_pairs(pairs)
    }  # an oracle that returns the HR
    result = evaluate_pairs(
        lambda lr: hr_by_lr[lr.tobytes()], pairs, tmp_path / "eval", name="oracle", progress=False
    )
    assert result.means["oracle"]["psnr_y"] == math.inf
    assert result.means["oracle"]["ssim_y"] == pytest.approx(1.0, abs=1e-12)
    rows = read_csv(result.csv_path)
    assert {r["psnr_y"] for r in rows if r["method"] == "oracle"} == {"inf"}
    doc = json.loads(result.json_path.read_text())  # strict JSON: inf -> null
    assert doc["metrics"]["oracle"]["psnr_y"] is None


def test_driver_on_16_bit_pairs(tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "pairs16", n=2, bit_depth=16)
    result = evaluate_pairs(nearest_x4, pairs, tmp_path / "eval", name="nearest", crops=1, progress=False)
    sr = read_image(tmp_path / "eval" / "sr" / "frame_00.png")
    assert sr.bit_depth == 16
    hr = read_image(pairs / "hr" / "frame_00.png").pixels
    assert result.rows[1]["psnr_y"] == pytest.approx(psnr_y(sr.pixels, hr), abs=1e-12)
    assert result.rows[1]["ssim_y"] == pytest.approx(ssim_y(sr.pixels, hr), abs=1e-12)
    assert 20 < result.means["bicubic"]["psnr_y"] < 60


def test_driver_rejects_wrong_model_output_and_bad_pairs(pairs: Path, tmp_path: Path) -> None:
    with pytest.raises(
        EvaluationError, match=r"frame_00.png: upscale_fn returned shape \(48, 96\); expected 96x192"
    ):
        evaluate_pairs(
            lambda lr: np.repeat(np.repeat(lr, 2, 0), 2, 1), pairs, tmp_path / "e1", progress=False
        )
    with pytest.raises(EvaluationError, match="reserved for the baseline"):
        evaluate_pairs(nearest_x4, pairs, tmp_path / "e2", name="bicubic", progress=False)
    (pairs / "lr" / "frame_01.png").rename(pairs / "lr" / "other.png")
    with pytest.raises(
        PairsError, match=r"1 in hr/ only \(e.g. frame_01.png\); 1 in lr/ only \(e.g. other.png\)"
    ):
        evaluate_pairs(nearest_x4, pairs, tmp_path / "e3", progress=False)


def test_driver_rejects_hr_that_is_not_4x_the_lr(tmp_path: Path) -> None:
    pairs = make_pairs(tmp_path / "p", n=1)
    Image.fromarray(np.zeros((LR_H * 4, LR_W * 4 - 4), np.uint8)).save(pairs / "hr" / "frame_00.png")
    with pytest.raises(EvaluationError, match="HR must be exactly x4 the LR"):
        evaluate_pairs(None, pairs, tmp_path / "e", progress=False)


# ---------------------------------------------------------------- evaluation-set md5


def test_dataset_md5_is_stable_and_tracks_names_and_bytes(pairs: Path, tmp_path: Path) -> None:
    md5 = dataset_md5(pairs)
    assert len(md5) == 32 and md5 == dataset_md5(pairs)
    copy = tmp_path / "copy"
    shutil.copytree(pairs, copy)
    assert dataset_md5(copy) == md5  # location-independent
    (copy / "notes.txt").write_text("part of the set for DVC")
    (copy / "manifest.jsonl").write_text("{}\n")
    assert dataset_md5(copy) != md5  # the DVC identity: every file DVC would track counts
    (copy / "notes.txt").unlink()
    (copy / "manifest.jsonl").unlink()
    assert dataset_md5(copy) == md5

    data = bytearray((copy / "hr" / "frame_02.png").read_bytes())
    data[-20] ^= 0x01
    (copy / "hr" / "frame_02.png").write_bytes(bytes(data))
    changed = dataset_md5(copy)
    assert changed != md5

    for side in ("hr", "lr"):
        (copy / side / "frame_00.png").rename(copy / side / "frame_99.png")
    assert dataset_md5(copy) not in (md5, changed)


# ---------------------------------------------------------------- MLflow (real tracking store: SQLite file)


@pytest.fixture(scope="module")
def sqlite_mlflow(tmp_path_factory: pytest.TempPathFactory):
    """One SQLite tracking/registry store for this module (creating its schema takes seconds)."""
    import mlflow
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_EXPERIMENT_NAME", "eval-test")
        mp.chdir(root)
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        exp = client.create_experiment("eval-test", artifact_location=(root / "artifacts").as_uri())
        yield client, exp
        mlflow.set_tracking_uri(None)


def test_log_to_mlflow_metrics_tag_and_artifacts(pairs: Path, tmp_path: Path, sqlite_mlflow) -> None:
    import mlflow

    client, exp = sqlite_mlflow
    result = evaluate_pairs(nearest_x4, pairs, tmp_path / "eval", name="nearest", progress=False)
    with mlflow.start_run(experiment_id=exp) as run:
        assert log_to_mlflow(result) == run.info.run_id  # the active run
    data = client.get_run(run.info.run_id).data
    assert data.metrics["eval/psnr_y"] == pytest.approx(result.means["nearest"]["psnr_y"])
    assert data.metrics["eval/bicubic_psnr_y"] == pytest.approx(result.means["bicubic"]["psnr_y"])
    assert data.metrics["eval/delta_ssim_y"] == pytest.approx(result.deltas["ssim_y"])
    assert data.metrics["eval/bicubic_niqe"] == pytest.approx(result.means["bicubic"]["niqe"])
    assert data.metrics["eval/n_images"] == 3
    assert data.tags["eval_md5"] == dataset_md5(pairs)
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert arts == {"evaluation/per_image.csv", "evaluation/aggregate.json", "evaluation/report.html"}

    new_id = log_to_mlflow(result)  # no active run: a new, finished run in MLFLOW_EXPERIMENT_NAME
    new_run = client.get_run(new_id)
    assert new_id != run.info.run_id and new_run.info.experiment_id == exp
    assert new_run.info.status == "FINISHED" and new_run.data.tags["eval_md5"] == result.dataset_md5


# ---------------------------------------------------------------- CLI


def test_cli_bicubic_baseline_and_errors(
    pairs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", "--model", "bicubic", "--pairs", str(pairs), "--out", str(tmp_path / "o"), "--no-mlflow",
                 "--no-progress"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert f"evaluated bicubic on 3 pairs (eval md5 {dataset_md5(pairs)}): psnr_y " in out
    assert "lpips: not computed: no weights" in out
    assert (tmp_path / "o" / "aggregate.json").is_file()

    code = main(["evaluate", "--model", str(tmp_path / "nowhere"), "--pairs", str(pairs), "--out", str(tmp_path / "x"),
                 "--no-mlflow"])  # fmt: skip
    assert code == 2
    assert "no such folder and not an MLflow URI" in capsys.readouterr().err


class _NearestPyfunc:
    """Stands in for the registry's pyfunc (same contract: uint8 (N,H,W) batch in, x4 batch out, params)."""

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 - MLflow's PythonModel API
        x = np.asarray(model_input)
        return np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)


def _save_nearest_pyfunc(path: Path, rgb: bool = False) -> Path:
    """Save the stand-in pyfunc (grey or RGB uint8 signature) as an MLflow model folder."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    model_cls = type("NearestPyfunc", (mlflow.pyfunc.PythonModel,), {"predict": _NearestPyfunc.predict})
    spec = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3) if rgb else (-1, -1, -1))])
    mlflow.pyfunc.save_model(
        str(path), python_model=model_cls(), signature=ModelSignature(spec, spec), pip_requirements=[]
    )
    return path


def test_cli_on_a_saved_mlflow_pyfunc_model(
    pairs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model_dir = _save_nearest_pyfunc(tmp_path / "pyfunc")
    code = main(["evaluate", "--model", str(model_dir), "--pairs", str(pairs), "--out", str(tmp_path / "o"),
                 "--no-mlflow", "--no-progress", "--name", "nearest-pyfunc"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "evaluated nearest-pyfunc on 3 pairs" in out
    lr = read_image(pairs / "lr" / "frame_01.png").pixels
    np.testing.assert_array_equal(read_image(tmp_path / "o" / "sr" / "frame_01.png").pixels, nearest_x4(lr))
    doc = json.loads((tmp_path / "o" / "aggregate.json").read_text())
    assert doc["meta"]["model_kind"] == "pyfunc" and doc["meta"]["settings"]["sampler"] == "onestep"


def test_cli_on_a_model_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tiny randomly initialised model folder through ``Upscaler.from_folder`` (one 16x16 LR keeps it fast)."""
    import torch

    from difiisr.inference import Upscaler
    from difiisr.models.bundle import save_model_folder
    from difiisr.models.preset import load_preset
    from difiisr.models.swin_unet import SwinUNet

    # random weights whose output depends on the seed (the shipped tiny preset starts exactly at bicubic)
    preset = load_preset("tiny", ["unet.zero_init_output=false"])
    torch.manual_seed(0)
    unet = SwinUNet(preset.unet)
    ae_state = None
    if preset.latent:
        from difiisr.models.vqgan import VQGANf4

        ae_state = VQGANf4(preset.autoencoder).state_dict()
    folder = save_model_folder(tmp_path / "model", preset, unet.state_dict(), ae_state, meta={"step": 0})
    pairs = make_pairs(tmp_path / "pairs", n=1, lr_size=(16, 16))
    code = main(["evaluate", "--model", str(folder), "--pairs", str(pairs), "--out", str(tmp_path / "o"),
                 "--no-mlflow", "--no-progress", "--seed", "5", "--device", "cpu"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "evaluated model on 1 pairs" in capsys.readouterr().out
    # The saved SR equals the Upscaler's output for the same input and seed.
    lr = read_image(pairs / "lr" / "frame_00.png").pixels
    expected = Upscaler.from_folder(folder, device="cpu").upscale_array(
        lr, InferenceSettings(sampler="onestep", seed=5)
    )
    np.testing.assert_array_equal(read_image(tmp_path / "o" / "sr" / "frame_00.png").pixels, expected)


def test_cli_on_mlflow_uris_logs_to_the_right_run(
    pairs: Path, tmp_path: Path, sqlite_mlflow, capsys: pytest.CaptureFixture[str]
) -> None:
    """models:/NAME@alias (registry) and runs:/ID/PATH (run artifact) are downloaded, evaluated and logged."""
    import mlflow

    client, exp = sqlite_mlflow
    saved = _save_nearest_pyfunc(tmp_path / "saved")
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifacts(str(saved), artifact_path="pyfunc_model")
    mv = mlflow.register_model(f"runs:/{run.info.run_id}/pyfunc_model", "nearest-x4")
    client.set_registered_model_alias("nearest-x4", "champion", mv.version)

    code = main(
        [
            "evaluate",
            "--model",
            "models:/nearest-x4@champion",
            "--pairs",
            str(pairs),
            "--out",
            str(tmp_path / "o1"),
            "--no-progress",
        ]
    )  # fmt: skip  (MLflow on: MLFLOW_TRACKING_URI set)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    new_run_id = captured.out.strip().splitlines()[-1].rsplit(" ", 1)[1]
    assert new_run_id != run.info.run_id
    data = client.get_run(new_run_id).data
    assert data.tags["eval_md5"] == dataset_md5(pairs)
    doc = json.loads((tmp_path / "o1" / "aggregate.json").read_text())
    assert data.metrics["eval/psnr_y"] == pytest.approx(
        doc["metrics"]["models:/nearest-x4@champion"]["psnr_y"]
    )

    code = main(["evaluate", "--model", f"runs:/{run.info.run_id}/pyfunc_model", "--pairs", str(pairs),
                 "--out", str(tmp_path / "o2"), "--no-progress", "--name", "nearest"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"logged to MLflow run {run.info.run_id}" in captured.out  # runs:/ID -> results go to that run
    assert client.get_run(run.info.run_id).data.metrics["eval/psnr_y"] == pytest.approx(
        data.metrics["eval/psnr_y"]
    )


def test_pyfunc_adapter_converts_grey_and_rgb_to_the_signature(tmp_path: Path) -> None:
    import mlflow.pyfunc

    from difiisr.evaluation.model_source import ModelSourceError, pyfunc_upscale_fn

    grey = (np.arange(12 * 10) % 251).astype(np.uint8).reshape(12, 10)
    rgb = np.stack([grey, grey, grey], axis=2)
    settings = InferenceSettings(seed=4)
    rgb_model = pyfunc_upscale_fn(
        mlflow.pyfunc.load_model(str(_save_nearest_pyfunc(tmp_path / "rgb", rgb=True))), settings
    )
    grey_model = pyfunc_upscale_fn(
        mlflow.pyfunc.load_model(str(_save_nearest_pyfunc(tmp_path / "grey"))), settings
    )
    for fn in (rgb_model, grey_model):
        np.testing.assert_array_equal(
            fn(grey), nearest_x4(grey)
        )  # grey in -> grey out, whatever the signature
        np.testing.assert_array_equal(fn(rgb), nearest_x4(rgb))  # RGB in -> RGB out
    with pytest.raises(ModelSourceError, match="takes uint8 images, got uint16"):
        grey_model(grey.astype(np.uint16))
    assert settings.to_params() == {
        "sampler": "onestep", "steps": 0, "seed": 4, "tile": 256, "tile_overlap": 32, "batch": 1,
        "precision": "auto", "guidance": "none", "guidance_scale": 8.0, "guidance_steps": 0,
        "guidance_space": "x0", "guidance_schedule": "constant", "guidance_spectral": 0.0, "guidance_checkpoint": False,
    }  # fmt: skip
