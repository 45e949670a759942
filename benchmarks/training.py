"""Training throughput and peak memory: ``tiny`` on CPU with 1 vs 2 ranks, and ``x4`` on GPU (bf16, 256^2 crops).

Every configuration runs ``difiisr train`` as real processes (``accelerate launch`` for 2 ranks) on synthetic data
and reads samples/s from the run's ``metrics.jsonl`` (the first logging window, which includes start-up, is
dropped). Peak memory: the largest summed RSS of the training process tree (CPU), and
``torch.cuda.max_memory_allocated`` of rank 0 (GPU). Scaling efficiency = samples/s(N) / (N x samples/s(1)) at the
same per-process micro-batch.

    .venv/bin/python benchmarks/training.py                 # CPU part; GPU part too when CUDA is present
    .venv/bin/python benchmarks/training.py --skip-cpu --gpu-batches 8 16 --gpu-steps 30

With one GPU, "2 processes" share that GPU (the number then measures contention, not multi-GPU scaling).
The x4 runs use random VQGAN/UNet weights: throughput does not depend on the values.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))


def hardware() -> str:
    """One line naming the CPU (model, cores) and the GPUs, with library versions."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = (
        ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        if torch.cuda.is_available()
        else "no CUDA GPU"
    )
    return (
        f"CPU: {cpu}, {os.cpu_count()} logical cores, load avg {os.getloadavg()[0]:.1f}; GPU: {gpus}; "
        f"torch {torch.__version__}"
    )


def make_data(root: Path, n: int, size: int) -> Path:
    """``n`` synthetic thermal frames ``size``^2 with PIL-bicubic /4 LR, in the pairs layout."""
    from difiisr.data.synthetic import generate_scene

    for side in ("hr", "lr"):
        (root / side).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        hr = generate_scene(size, size, seed=k)
        lr = np.asarray(Image.fromarray(hr).resize((size // 4, size // 4), Image.Resampling.BICUBIC))
        Image.fromarray(hr).save(root / "hr" / f"{k:04d}.png")
        Image.fromarray(lr).save(root / "lr" / f"{k:04d}.png")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_training(config: dict, processes: int, env_extra: dict[str, str], workdir: Path) -> dict[str, float]:
    """Run one training (1 process, or ``accelerate launch`` with ``processes``); returns throughput and memory."""
    cfg_file = workdir / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(config))
    train_args = ["-m", "difiisr.cli.main", "--log-level", "WARNING", "train", "--config", str(cfg_file)]
    if processes == 1:
        cmd = [PYTHON, *train_args]
    else:
        cmd = [
            ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", str(config["mixed_precision"]), "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), *train_args,
        ]  # fmt: skip
    env = {**os.environ, **env_extra}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=workdir
    )
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(ps))
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"training failed ({proc.returncode}): {' '.join(cmd)}\n{err[-4000:]}")
    records = [json.loads(x) for x in (Path(config["out_dir"]) / "metrics.jsonl").read_text().splitlines()]
    steady = records[1:] or records
    return {
        "samples_per_s": float(np.mean([r["samples_per_s"] for r in steady])),
        "peak_rss_gib": peak / 2**30,
        "peak_gpu_gib": max((r.get("peak_mem_gib", 0.0) for r in records), default=0.0),
        "wall_s": time.perf_counter() - start,
    }


def tiny_config(data: Path, out: Path, micro_batch: int, processes: int, steps: int) -> dict:
    """The tiny preset on 64x64 crops, ``micro_batch`` per process, no tracking/validation."""
    from difiisr.training import load_train_config

    cfg = load_train_config(
        "train_tiny",
        [
            f"data.train_dir={data}",
            f"data.batch_size={micro_batch * processes}",
            f"max_steps={steps}",
            f"log_every={max(1, steps // 5)}",
            f"save_every={steps * 10}",
            "keep_checkpoints=1",
            "mlflow.enabled=false",
            f"out_dir={out}",
        ],
    )
    return cfg.to_dict()


def x4_config(data: Path, out: Path, vae: Path, micro_batch: int, processes: int, steps: int) -> dict:
    """The x4 recipe (online Real-ESRGAN degradation, bf16, 256^2 crops), ``micro_batch`` per process."""
    from difiisr.training import load_train_config

    cfg = load_train_config(
        "train_x4",
        [
            f"data.train_dir={data}",
            f"data.batch_size={micro_batch * processes}",
            "data.workers=4",
            f"model.autoencoder_ckpt={vae}",
            f"max_steps={steps}",
            f"log_every={max(1, steps // 5)}",
            f"save_every={steps * 10}",
            "keep_checkpoints=1",
            "mlflow.enabled=false",
            f"out_dir={out}",
        ],
    )
    return cfg.to_dict()


def bench_cpu(work: Path, steps: int, micro_batch: int, threads: int) -> None:
    """tiny on CPU: 1 process vs 2 ranks (gloo), same micro-batch and ``threads`` intra-op threads per process."""
    data = make_data(work / "tiny_data", 4 * micro_batch, 96)
    print(
        f"\n== tiny preset, CPU, 64x64 crops, micro-batch {micro_batch}/process, {threads} thread(s)/process, "
        f"{steps} steps"
    )
    results = {}
    for n in (1, 2):
        out = work / f"tiny_{n}"
        env = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": str(threads)}
        res = run_training(tiny_config(data, out, micro_batch, n, steps), n, env, work)
        results[n] = res
        print(
            f"  {n} rank(s): {res['samples_per_s']:8.2f} samples/s  peak RSS {res['peak_rss_gib']:.2f} GiB "
            f"(all processes)  wall {res['wall_s']:.0f} s"
        )
    eff = results[2]["samples_per_s"] / (2 * results[1]["samples_per_s"])
    print(f"  scaling efficiency 1 -> 2 ranks: {eff * 100:.0f}%")


def bench_gpu(work: Path, steps: int, batches: list[int]) -> None:
    """x4 on GPU(s): bf16, 256^2 crops, online degradation; 1 vs 2 processes per micro-batch size."""
    from safetensors.torch import save_file

    from difiisr.models import VQGANf4
    from difiisr.models.preset import load_preset

    vae = work / "vae_random.safetensors"
    save_file(VQGANf4(load_preset("x4").autoencoder).state_dict(), str(vae))
    data = make_data(work / "x4_data", 2 * max(batches) * 2, 288)
    n_gpus = torch.cuda.device_count()
    note = "2 GPUs" if n_gpus >= 2 else "2 processes sharing 1 GPU (only one GPU lent)"
    for mb in batches:
        print(f"\n== x4 preset, bf16, 256x256 crops, micro-batch {mb}/process, {steps} steps")
        results = {}
        for n in (1, 2):
            out = work / f"x4_{mb}_{n}"
            res = run_training(x4_config(data / "hr", out, vae, mb, n, steps), n, {}, work)
            results[n] = res
            label = "1 process" if n == 1 else note
            print(
                f"  {label}: {res['samples_per_s']:8.2f} samples/s  peak GPU mem (rank 0) "
                f"{res['peak_gpu_gib']:.2f} GiB  wall {res['wall_s']:.0f} s"
            )
        eff = results[2]["samples_per_s"] / (2 * results[1]["samples_per_s"])
        print(f"  scaling efficiency 1 -> 2: {eff * 100:.0f}% ({note}; target >= 90% across GPUs)")


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-steps", type=int, default=30)
    parser.add_argument("--cpu-micro-batch", type=int, default=4)
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=1,
        help="OMP threads per process (more than cores/ranks oversubscribes)",
    )
    parser.add_argument("--gpu-steps", type=int, default=30)
    parser.add_argument("--gpu-batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-gpu", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="keep runs here (default: a temp folder)")
    args = parser.parse_args(argv)
    print(hardware())
    with tempfile.TemporaryDirectory(prefix="difiisr-bench-train-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_cpu:
            bench_cpu(work, args.cpu_steps, args.cpu_micro_batch, args.cpu_threads)
        if not args.skip_gpu:
            if torch.cuda.is_available():
                bench_gpu(work, args.gpu_steps, args.gpu_batches)
            else:
                print("\n== x4 on GPU: skipped (no CUDA device here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
