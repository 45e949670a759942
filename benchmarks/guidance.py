"""Gradient guidance, measured: unguided vs sampling-time guided vs trained with the spectral loss (tiny, CPU).

Protocol (every number from real runs of the package; nothing is tuned on the test images):

1. Data: synthetic thermal scenes (``difiisr.data.synthetic.generate_scene``) with the bicubic x1/4 test protocol
   (``degrade_folder(protocol="bicubic")``, Pillow bicubic): ``--train-images`` HR of ``--train-size``^2 (seeds
   0..), ``--val-images`` and ``--test-images`` HR of ``--test-size``^2 (seeds 20000.., 10000..).
2. Training (reused when a folder already holds a model trained with the same steps, seed and losses; ``--model
   DIR`` replaces the baseline and skips the spectral models): the ``train_tiny`` recipe on main, via
   ``difiisr.training.train``, with ``max_steps=--steps``, no MLflow, for each training seed of ``--seeds``; the
   spectral model of a seed is the same run (same seed, data, steps) with
   ``losses.spectral.weight=--spectral-weight`` and ``losses.spectral.radial_power=--radial-power``. Seed-to-seed
   spread of a few hundred CPU steps is large (measured: 0.95 dB PSNR_Y across 3 seeds), so the spectral loss is
   judged by its mean change over the seeds.
3. Sampling-time guidance in both spaces (``guidance_space`` x0, the default, and xt, the paper's z_t form): the
   scale of each is chosen on the VALIDATION images: among ``--scales-x0`` / ``--scales-xt``, the best
   LR-consistency PSNR whose PSNR_Y is not below the unguided one (sweeps printed).
4. Test table (``--sampler``, seed 0, no tiling): PSNR_Y, SSIM_Y, NIQE (``difiisr.evaluation.metrics``),
   LR-consistency PSNR = PSNR of Pillow's bicubic /4 of the 8-bit SR vs the LR (grey, data range 255), the
   high-frequency spectrum error = mean |log(1+|F SR|) - log(1+|F HR|)| over frequencies above the LR Nyquist
   (f > 0.125 cycles/pixel, orthonormal FFT of [-1,1] grey), and wall seconds per image.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/guidance.py --work outputs/bench_guidance
    PYTHONPATH=src .venv/bin/python benchmarks/guidance.py --model outputs/train_tiny/model --skip-spectral

A rerun reuses the data, the trained models and resumes an interrupted training.

Timings depend on the machine and its load (printed with the hardware line).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

LR_NYQUIST = 0.125  # cycles per SR pixel: the highest frequency a x1/4 LR holds


def hardware_line() -> str:
    """The machine (``benchmarks/inference.py``'s ``hardware``) plus the load average while this ran."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from inference import hardware  # the sibling benchmark script: one way to name the machine

    info = hardware()
    return ", ".join(f"{k} {v}" for k, v in info.items()) + f", load average {os.getloadavg()[0]:.1f}"


def make_split(root: Path, name: str, n: int, size: int, first_seed: int) -> Path:
    """``n`` synthetic HR scenes of ``size``^2 -> a bicubic-protocol pairs folder ``root/name``."""
    from difiisr.data.synthetic import generate_scene
    from difiisr.degradation import degrade_folder

    pairs = root / name
    if (pairs / "manifest.jsonl").is_file():
        return pairs
    hr = root / f"{name}_hr"
    hr.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(generate_scene(size, size, seed=first_seed + k)).save(hr / f"{k:04d}.png")
    degrade_folder(hr, pairs, protocol="bicubic", crop=None, progress=False)
    return pairs


def train_model(out: Path, data: Path, steps: int, overrides: list[str]) -> Path:
    """Train the ``train_tiny`` recipe (plus ``overrides``) into ``out``; reuse ``out/model`` when present and
    trained with the same configuration (otherwise stop: pass another ``--work``)."""
    from difiisr.training import load_train_config, train

    cfg = load_train_config(
        "train_tiny",
        [
            f"data.train_dir={data}",
            f"max_steps={steps}",
            "mlflow.enabled=false",
            f"out_dir={out}",
            f"log_every={max(1, steps // 10)}",
            f"save_every={steps}",
            *overrides,
        ],
    )
    if (out / "model" / "model.yaml").is_file():
        saved = yaml.safe_load((out / "train_config.yaml").read_text())
        wanted = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists, as in the saved YAML
        keys = ("max_steps", "seed", "losses")
        if any(saved.get(k) != wanted.get(k) for k in keys):
            raise SystemExit(f"{out} holds a model trained with other {'/'.join(keys)}; use another --work")
        logging.info("reusing %s", out / "model")
        return out / "model"
    start = time.perf_counter()
    result = train(cfg, resume=True)
    if result.status != "completed" or result.model_dir is None:
        raise SystemExit(f"training {out} {result.status} at step {result.step}; rerun to resume it")
    logging.info("trained %s in %.0f s", out, time.perf_counter() - start)
    return result.model_dir


def hf_spectrum_error(sr: np.ndarray, hr: np.ndarray) -> float:
    """Mean |log(1+|F sr|) - log(1+|F hr|)| over frequencies above the LR Nyquist, grey [-1,1] images."""
    from difiisr.diffusion.guidance import log_amplitude_distance

    def tensor(img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(img.astype(np.float64) / 127.5 - 1.0)[None, None]

    return float(log_amplitude_distance(tensor(sr), tensor(hr), band=(LR_NYQUIST, 1.0)))


def evaluate(upscaler, pairs: Path, settings, *, full: bool = True) -> dict[str, float]:  # noqa: ANN001
    """Mean metrics of ``upscaler`` with ``settings`` over a pairs folder (``full``: also SSIM, NIQE, HF error)."""
    from difiisr.degradation.bicubic import bicubic_downsample
    from difiisr.evaluation.metrics import niqe, psnr, psnr_y, ssim_y
    from difiisr.io import read_image

    rows: list[dict[str, float]] = []
    for path in sorted((pairs / "lr").iterdir()):
        lr = read_image(path).pixels
        hr = read_image(pairs / "hr" / path.name).pixels
        start = time.perf_counter()
        sr = upscaler.upscale_array(lr, settings) if upscaler is not None else bicubic_sr(lr)
        seconds = time.perf_counter() - start
        row = {
            "psnr_y": psnr_y(sr, hr),
            "lr_psnr": psnr(bicubic_downsample(sr, 4), lr),
            "s_per_image": seconds,
        }
        if full:
            row.update(ssim_y=ssim_y(sr, hr), niqe=niqe(sr), hf_error=hf_spectrum_error(sr, hr))
        rows.append(row)
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def bicubic_sr(lr: np.ndarray) -> np.ndarray:
    """The bicubic x4 reference: torch bicubic (as z_y is formed), clamped and rounded to 8 bits."""
    from difiisr.io import image_to_tensor, tensor_to_image
    from difiisr.models.conditioning import bicubic_upsample

    up = bicubic_upsample(image_to_tensor(lr), 4).clamp(-1, 1)
    return tensor_to_image(up, bit_depth=8, channels=1)


def choose_scale(upscaler, val: Path, base, scales: list[float], schedule: str, space: str) -> float:  # noqa: ANN001
    """The scale of ``scales`` with the best validation LR-PSNR among those not lowering validation PSNR_Y."""
    plain = evaluate(upscaler, val, base, full=False)
    n = len(list((val / "lr").iterdir()))
    print(f"\nscale sweep on {n} validation images (space {space}, {schedule} schedule):")
    print(f"  {'unguided':>10}  PSNR_Y {plain['psnr_y']:7.3f}  LR-PSNR {plain['lr_psnr']:6.2f}")
    best, best_lr = scales[0], -np.inf
    for scale in scales:
        guided = base.replace(
            guidance="lr-consistency", guidance_scale=scale, guidance_schedule=schedule, guidance_space=space
        )
        m = evaluate(upscaler, val, guided, full=False)
        ok = m["psnr_y"] >= plain["psnr_y"]
        print(
            f"  {scale:>10g}  PSNR_Y {m['psnr_y']:7.3f}  LR-PSNR {m['lr_psnr']:6.2f}{'' if ok else '  (lowers PSNR_Y)'}"
        )
        if ok and m["lr_psnr"] > best_lr:
            best, best_lr = scale, m["lr_psnr"]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work", type=Path, default=Path("outputs/bench_guidance"), help="data, runs (reused)"
    )
    parser.add_argument("--model", type=Path, help="a trained tiny model folder to use as the baseline")
    parser.add_argument("--skip-spectral", action="store_true", help="no spectral-loss model")
    parser.add_argument("--steps", type=int, default=400, help="training steps of each model")
    parser.add_argument("--train-images", type=int, default=48)
    parser.add_argument("--train-size", type=int, default=128)
    parser.add_argument("--val-images", type=int, default=4)
    parser.add_argument("--test-images", type=int, default=8)
    parser.add_argument("--test-size", type=int, default=192, help="HR side of val/test (NIQE needs >= 192)")
    parser.add_argument("--spectral-weight", type=float, default=0.02)
    parser.add_argument("--radial-power", type=float, default=1.0)
    parser.add_argument(
        "--seeds",
        default="0,1,2",
        help="training seeds of the baseline/spectral pairs (the table uses the first)",
    )
    parser.add_argument("--sampler", default="ddim", choices=["ddim", "ancestral"])
    parser.add_argument(
        "--scales-x0", default="2,4,8,16", help="x0-space guidance scales tried on validation"
    )
    parser.add_argument(
        "--scales-xt", default="512,2048,8192", help="xt-space (z_t) guidance scales tried on validation"
    )
    parser.add_argument("--schedule", default="constant", choices=["constant", "linear", "eta"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    from difiisr.inference.settings import InferenceSettings
    from difiisr.inference.upscaler import Upscaler

    work = args.work
    train = make_split(work, "train", args.train_images, args.train_size, 0)
    val = make_split(work, "val", args.val_images, args.test_size, 20000)
    test = make_split(work, "test", args.test_images, args.test_size, 10000)
    seeds = [int(v) for v in args.seeds.split(",")]
    spectral_name = f"spectral_w{args.spectral_weight:g}_r{args.radial_power:g}"
    spectral_overrides = [
        f"losses.spectral.weight={args.spectral_weight}",
        f"losses.spectral.radial_power={args.radial_power}",
    ]

    def run_dir(name: str, seed: int) -> Path:
        return work / (name if seed == 0 else f"{name}_seed{seed}")

    pairs: dict[int, tuple[Path, Path]] = {}  # seed -> (baseline, spectral) model folders
    if args.model is None and not args.skip_spectral:
        for seed in seeds:
            pairs[seed] = (
                train_model(run_dir("baseline", seed), train, args.steps, [f"seed={seed}"]),
                train_model(
                    run_dir(spectral_name, seed), train, args.steps, [f"seed={seed}", *spectral_overrides]
                ),
            )
    baseline_dir = args.model or (
        pairs[seeds[0]][0]
        if pairs
        else train_model(run_dir("baseline", seeds[0]), train, args.steps, [f"seed={seeds[0]}"])
    )
    spectral_dir = pairs[seeds[0]][1] if pairs else None

    base = InferenceSettings(sampler=args.sampler, seed=0, tile=None)
    baseline = Upscaler.from_folder(baseline_dir, device="cpu")
    guided = {}
    for space in ("x0", "xt"):
        scales = [float(s) for s in getattr(args, f"scales_{space}").split(",")]
        scale = choose_scale(baseline, val, base, scales, args.schedule, space)
        guided[f"guided {space} (scale {scale:g})"] = base.replace(
            guidance="lr-consistency",
            guidance_scale=scale,
            guidance_schedule=args.schedule,
            guidance_space=space,
        )

    rows = {"bicubic": evaluate(None, test, base)}
    rows["unguided"] = evaluate(baseline, test, base)
    for name, settings in guided.items():
        rows[name] = evaluate(baseline, test, settings)
    if spectral_dir is not None:
        spectral = Upscaler.from_folder(spectral_dir, device="cpu")
        rows["spectral-loss"] = evaluate(spectral, test, base)
        name, settings = next(iter(guided.items()))
        rows[f"spectral-loss + {name.split(' (')[0]}"] = evaluate(spectral, test, settings)

    print(f"\nhardware: {hardware_line()}")
    print(
        f"recipe: train_tiny on main, {args.steps} steps, {args.train_images} HR {args.train_size}^2 synthetic scenes "
        f"(bicubic protocol), training seed {seeds[0]}; spectral model: losses.spectral weight "
        f"{args.spectral_weight}, radial_power {args.radial_power}; sampler {args.sampler}, sampling seed 0, "
        f"{args.test_images} test HR {args.test_size}^2"
    )
    header = f"{'':26} {'PSNR_Y':>7} {'SSIM_Y':>7} {'NIQE':>6} {'LR-PSNR':>8} {'HF err':>7} {'s/img':>6}"
    print(header)
    for name, m in rows.items():
        print(
            f"{name:26} {m['psnr_y']:7.3f} {m['ssim_y']:7.4f} {m['niqe']:6.2f} {m['lr_psnr']:8.2f} "
            f"{m['hf_error']:7.4f} {m['s_per_image']:6.2f}"
        )

    plain = rows["unguided"]
    print()
    for name in guided:
        g = rows[name]
        gain, dpsnr = g["lr_psnr"] - plain["lr_psnr"], g["psnr_y"] - plain["psnr_y"]
        met = gain >= 3.0 and dpsnr >= 0
        print(
            f"target 1 (guidance: LR-PSNR +>=3 dB, PSNR_Y not lower), {name}: LR-PSNR {gain:+.2f} dB, "
            f"PSNR_Y {dpsnr:+.3f} dB -> {'MET' if met else 'NOT MET'}"
        )
    if pairs:
        print(f"\nspectral loss vs baseline per training seed (test set, {args.sampler}):")
        deltas = []
        for seed, (b_dir, s_dir) in pairs.items():
            if seed == seeds[0]:
                b, s = plain, rows["spectral-loss"]
            else:
                b = evaluate(Upscaler.from_folder(b_dir, device="cpu"), test, base)
                s = evaluate(Upscaler.from_folder(s_dir, device="cpu"), test, base)
            deltas.append((s["psnr_y"] - b["psnr_y"], s["hf_error"] - b["hf_error"]))
            print(
                f"  seed {seed}: baseline PSNR_Y {b['psnr_y']:.3f} HF {b['hf_error']:.4f} | spectral PSNR_Y "
                f"{s['psnr_y']:.3f} HF {s['hf_error']:.4f} | delta PSNR_Y {deltas[-1][0]:+.3f} dB, HF "
                f"{deltas[-1][1]:+.4f}"
            )
        mean_dpsnr = float(np.mean([d[0] for d in deltas]))
        met_s = mean_dpsnr >= 0 and all(d[1] < 0 for d in deltas)
        print(
            f"target 2 (spectral loss: PSNR_Y not lower, HF spectrum error lower; mean over {len(deltas)} seed(s), "
            f"HF lower for every seed): PSNR_Y {mean_dpsnr:+.3f} dB, HF lower in "
            f"{sum(d[1] < 0 for d in deltas)}/{len(deltas)} -> {'MET' if met_s else 'NOT MET'}"
        )


if __name__ == "__main__":
    main()
