"""Throughput of the Real-ESRGAN degradation: images/s on 256x256 crops, batched vs one image per call.

    [OMP_WAIT_POLICY=PASSIVE] .venv/bin/python benchmarks/degradation.py [--total 128] [--repeats 8]
        [--batch 32] [--size 256] [--device cpu,cuda] [--threads 1,2]

Both modes degrade the same images with the same per-image seeds and the default config
(``resize_scope="batch"``, as the reference), at the same torch thread count; a batch-1 call is the same code
as a batch-32 call. Prints the hardware (CPU model, load, GPU name) and, per device and thread count, images/s
(wall) and CPU ms per image of each mode, and the ratios. Target: batched >= 3x per-image on CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from difiisr.degradation import RealESRGANDegradation, image_seeds


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform.processor())."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_pass(
    pipeline: RealESRGANDegradation, hr: torch.Tensor, seeds: list[int], step: int
) -> tuple[float, float, float]:
    """Degrade all of ``hr`` ``step`` images per call -> (wall s, CPU s, summed stage-1 area factor)."""
    _sync(hr.device)
    start, start_cpu = time.perf_counter(), time.process_time()
    area = 0.0
    for i in range(0, hr.shape[0], step):
        _, records = pipeline(hr[i : i + step], seeds[i : i + step])
        area += sum(r["resize1"]["size"][0] * r["resize1"]["size"][1] for r in records)
    _sync(hr.device)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return wall, cpu, area / (hr.shape[2] * hr.shape[3])


def measure(
    pipeline: RealESRGANDegradation,
    device: torch.device,
    threads: list[int],
    total: int,
    batch: int,
    size: int,
    repeats: int,
) -> dict[tuple[int, int], tuple[float, float, float]]:
    """{(threads, step): (img/s, CPU ms/img, mean stage-1 area factor)} for step 1 and ``batch``.

    Passes alternate (repeat -> thread count -> mode), so that other load on the machine hits every
    configuration alike; each repeat uses new seeds, the same for both modes. Totals over all passes are used
    (not the best pass): a batch shares one stage-1 resize, drawn by its first image, so its cost varies with
    that draw and only the average over many batches compares fairly with per-image draws (the printed mean
    area factor, stage-1 pixels / HR pixels, shows how close the two workloads came). CPU ms/img is process
    CPU time (all threads, spin-waiting included).
    """
    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(total, 3, size, size, generator=gen).to(device)
    sums = {(t, s): [0.0, 0.0, 0.0] for t in threads for s in (1, batch)}
    for rep in range(repeats):
        seeds = image_seeds(1_000 + rep, total)
        for t in threads:
            if device.type == "cpu":
                torch.set_num_threads(t)
            for step in (1, batch):
                for k, value in enumerate(_one_pass(pipeline, hr, seeds, step)):
                    sums[(t, step)][k] += value
    n = total * repeats
    return {key: (n / w, 1000 * c / n, a / n) for key, (w, c, a) in sums.items()}


def main() -> None:
    """Run the benchmark on each requested device and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=128, help="images per pass (default 128)")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the batched mode (default 32)")
    parser.add_argument("--size", type=int, default=256, help="HR crop side in pixels (default 256)")
    parser.add_argument(
        "--repeats", type=int, default=8, help="passes per mode and thread count, new seeds each (default 8)"
    )
    parser.add_argument(
        "--device", default="cpu,cuda", help="comma-separated devices; cuda is skipped if absent"
    )
    parser.add_argument(
        "--threads", default="1,2", help="comma-separated torch CPU thread counts to compare (default 1,2)"
    )
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]

    load_start = os.getloadavg()[0]
    print(
        f"CPU: {cpu_model()} ({os.cpu_count()} logical cores, load average {load_start:.1f}); "
        f"torch {torch.__version__}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    pipeline = RealESRGANDegradation()
    for name in args.device.split(","):
        device = torch.device(name.strip())
        counts = threads if device.type == "cpu" else [torch.get_num_threads()]
        if device.type == "cuda":
            if not torch.cuda.is_available():
                print("cuda: no CUDA device visible; skipped")
                continue
            print(f"GPU: {torch.cuda.get_device_name(device)}")
        # warm-up: imports basicsr, builds DiffJPEG, lets kernels and caches settle
        warm = torch.rand(min(args.batch, args.total), 3, args.size, args.size, device=device)
        for t in counts:
            if device.type == "cpu":
                torch.set_num_threads(t)
            pipeline(warm, 12345)
            pipeline(warm[:1], 12346)
        res = measure(pipeline, device, counts, args.total, args.batch, args.size, args.repeats)
        for t in counts:
            (one, one_cpu, one_area), (many, many_cpu, many_area) = res[(t, 1)], res[(t, args.batch)]
            where = f"{t} thread{'s' * (t != 1)}" if device.type == "cpu" else "GPU"
            print(
                f"{device.type}, {where}: {args.size}x{args.size} crops, {args.total} images x "
                f"{args.repeats} passes: batch 1 {one:.1f} img/s ({one_cpu:.1f} CPU ms/img, "
                f"stage-1 area x{one_area:.2f}), "
                f"batch {args.batch} {many:.1f} img/s ({many_cpu:.1f} CPU ms/img, area x{many_area:.2f}); "
                f"ratio {many / one:.2f}x wall, {one_cpu / many_cpu:.2f}x CPU time"
            )
    load_end = os.getloadavg()[0]
    print(f"load average at the end: {load_end:.1f}")
    if max(threads) > 1 and max(load_start, load_end) >= 1.0 and "OMP_WAIT_POLICY" not in os.environ:
        print(
            "warning: other processes were running; with more than one thread, OpenMP's spin-waiting then "
            "slows many small calls (batch 1) far more than few large ones, which inflates the ratio; rerun "
            "with OMP_WAIT_POLICY=PASSIVE (or on an idle machine) for figures at several threads"
        )


if __name__ == "__main__":
    main()
