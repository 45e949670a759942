"""Quality of the demo's tiny model against bicubic: PSNR_Y (model - PIL bicubic) per seed and sampler, with time.

Reproduces the demo's data and training steps with the real CLI verbs, as separate processes:

    difiisr synth-data   (train and test HR frames, seeds 0 and 1000)
    difiisr degrade      (training pairs: --train-protocol, bicubic by default; test pairs: bicubic protocol)
    difiisr train        --config train_tiny --set data.train_dir=... --set seed=S [--set KEY=VALUE ...]
    difiisr evaluate     --sampler onestep|ddim|ancestral --no-mlflow   (delta_vs_bicubic.psnr_y of aggregate.json)

and prints, per seed, the training wall time and steps/s (from metrics.jsonl, first window dropped) and the
PSNR_Y gain of each sampler over the PIL-bicubic baseline of ``difiisr evaluate``. It also prints the gain of
plain torch bicubic (a=-0.75, the z_y every pixel-space model starts from; a zero-initialised residual model
outputs exactly this before training), so the part of the gain that the training adds can be read off.

    .venv/bin/python benchmarks/tiny_recipe.py                          # the shipped recipe, seeds 0 1 2
    .venv/bin/python benchmarks/tiny_recipe.py --seeds 0 --set max_steps=100 --samplers onestep
    .venv/bin/python benchmarks/tiny_recipe.py --train-frames 8 --test-frames 2 --size 128 \\
        --set max_steps=30 --set data.batch_size=4      # the CI micro configuration

Timing figures depend on the machine's load: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PYTHON = sys.executable


def hardware() -> str:
    """One line naming the CPU (model, cores), the torch threads and the load average."""
    cpu = platform.processor() or "unknown CPU"
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"CPU: {cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load avg {os.getloadavg()[0]:.1f}"
    )


def cli(*args: str) -> None:
    """Run ``difiisr ARGS`` as a process (the shipped entry point); raise with its stderr on failure."""
    cmd = [PYTHON, "-m", "difiisr.cli.main", "--log-level", "WARNING", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-4000:]}")


def make_data(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The demo's data recipe: synthetic train/test HR frames, training pairs, bicubic-protocol test pairs."""
    size = f"{args.size}x{args.size}"
    cli("synth-data", "--out", str(work / "hr/train"), "--n", str(args.train_frames), "--size", size,
        "--bit-depth", "8", "--seed", "0")  # fmt: skip
    cli("synth-data", "--out", str(work / "hr/test"), "--n", str(args.test_frames), "--size", size,
        "--bit-depth", "8", "--seed", "1000")  # fmt: skip
    train = work / f"pairs/train_{args.train_protocol}"
    extra = ["--variants", "2", "--crop", str(args.size)] if args.train_protocol == "realesrgan" else []
    cli("degrade", "--hr", str(work / "hr/train"), "--out", str(train), "--protocol", args.train_protocol,
        "--seed", "1", "--device", "cpu", "--no-progress", *extra)  # fmt: skip
    test = work / "pairs/test"
    cli("degrade", "--hr", str(work / "hr/test"), "--out", str(test), "--protocol", "bicubic", "--seed", "0",
        "--device", "cpu", "--no-progress")  # fmt: skip
    return train, test


def torch_bicubic_gain(pairs: Path) -> float:
    """PSNR_Y of torch bicubic x4 (a=-0.75, clamped, rounded) minus that of PIL bicubic, mean over the pairs."""
    from difiisr.evaluation.baseline import bicubic_upscale
    from difiisr.evaluation.metrics import psnr_y
    from difiisr.io import image_to_tensor, read_image, tensor_to_image

    gains = []
    for hr_path in sorted((pairs / "hr").iterdir()):
        hr = read_image(hr_path).pixels
        lr = read_image(pairs / "lr" / hr_path.name).pixels
        up = F.interpolate(image_to_tensor(lr), scale_factor=4, mode="bicubic", align_corners=False)
        sr = tensor_to_image(up.clamp(-1, 1), bit_depth=8, channels=1 if lr.ndim == 2 else 3)
        gains.append(psnr_y(sr, hr) - psnr_y(bicubic_upscale(lr), hr))
    return float(np.mean(gains))


def train_and_evaluate(
    work: Path, train: Path, test: Path, seed: int, args: argparse.Namespace
) -> dict[str, float]:
    """One training run with ``seed`` and its evaluation with every sampler; returns times and PSNR_Y gains."""
    out = work / f"runs/seed{seed}"
    sets = [f"data.train_dir={train}", f"out_dir={out}", f"seed={seed}", "mlflow.enabled=false",
            "validation.dir=null", *args.set]  # fmt: skip
    start = time.perf_counter()
    cli("train", "--config", "train_tiny", *[x for s in sets for x in ("--set", s)])
    row: dict[str, float] = {"train_s": time.perf_counter() - start}
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    row["steps"] = float(records[-1]["step"])
    # each record covers the steps since the previous one; steady rate = samples / seconds, first window dropped
    steps = np.diff([0] + [r["step"] for r in records])[1:]
    rates = np.array([r["samples_per_s"] for r in records[1:]])
    row["samples_per_s"] = float(steps.sum() / (steps / rates).sum()) if len(rates) else float("nan")
    for sampler in args.samplers:
        ev = out / f"eval_{sampler}"
        cli("evaluate", "--model", str(out / "model"), "--pairs", str(test), "--out", str(ev), "--sampler", sampler,
            "--no-mlflow", "--no-progress")  # fmt: skip
        aggregate = json.loads((ev / "aggregate.json").read_text())
        row[sampler] = float(aggregate["delta_vs_bicubic"]["psnr_y"])
        row["bicubic"] = float(aggregate["metrics"]["bicubic"]["psnr_y"])
    return row


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every seed, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", default=["onestep", "ancestral"],
                        choices=["onestep", "ddim", "ancestral"])  # fmt: skip
    parser.add_argument("--train-frames", type=int, default=16)
    parser.add_argument("--test-frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic HR frames (pixels)")
    parser.add_argument("--train-protocol", choices=["bicubic", "realesrgan"], default="bicubic")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="training override, as 'difiisr train --set' (repeatable)")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and runs here (default: temp)")
    args = parser.parse_args(argv)

    print(hardware())
    with tempfile.TemporaryDirectory(prefix="difiisr-tiny-recipe-") as tmp:
        work = args.workdir or Path(tmp)
        start = time.perf_counter()
        train, test = make_data(work, args)
        print(f"data: {args.train_frames}+{args.test_frames} frames {args.size}^2, training pairs "
              f"{args.train_protocol}, {time.perf_counter() - start:.1f} s; overrides: {args.set or 'none'}")  # fmt: skip
        print(f"torch bicubic (zero-init residual model before training): {torch_bicubic_gain(test):+.3f} dB")
        header = f"{'seed':>4} {'steps':>5} {'train_s':>7} {'samples/s':>9} " + " ".join(
            f"{s:>9}" for s in args.samplers
        )
        print(f"PSNR_Y model - bicubic (dB):\n{header}")
        rows = []
        for seed in args.seeds:
            row = train_and_evaluate(work, train, test, seed, args)
            rows.append(row)
            gains = " ".join(f"{row[s]:+9.3f}" for s in args.samplers)
            print(
                f"{seed:>4} {row['steps']:>5.0f} {row['train_s']:>7.1f} {row['samples_per_s']:>9.2f} {gains}"
            )
        means = " ".join(f"{np.mean([r[s] for r in rows]):+9.3f}" for s in args.samplers)
        print(f"mean {'':>5} {np.mean([r['train_s'] for r in rows]):>7.1f} {'':>9} {means}")
        print(f"bicubic PSNR_Y {rows[0]['bicubic']:.3f} dB; load avg now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
