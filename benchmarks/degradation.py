"""Throughput of the Real-ESRGAN degradation: images/s on 256x256 crops, batched vs one image per call.

    .venv/bin/python benchmarks/degradation.py [--total 128] [--repeats 3] [--batch 32] [--size 256]
        [--device cpu,cuda] [--threads N]

Both modes degrade the same number of images (``--total``) with the default config (``resize_scope="batch"``,
as the reference). Prints the hardware (CPU model, torch threads, GPU name), images/s of each mode and the
ratio. Target: batched >= 3x per-image on CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from difiisr.degradation import RealESRGANDegradation


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


def measure(
    pipeline: RealESRGANDegradation, device: torch.device, total: int, batch: int, size: int, repeats: int
) -> dict[int, tuple[float, float]]:
    """{1: (img/s, CPU ms/img), batch: (...)} over ``repeats`` passes of ``total`` (size x size) images each.

    The two modes alternate pass by pass, so that other load on the machine hits both alike, and each pass
    uses new seeds. The total over all passes is used (not the best pass): a batch shares one resize draw, so
    its cost varies with the draw, and only the average over many draws compares fairly with per-image draws.
    CPU ms/img is process CPU time (all threads), a steadier measure than wall time on a shared machine.
    """
    gen = torch.Generator().manual_seed(0)
    hr = torch.rand(total, 3, size, size, generator=gen).to(device)
    wall = {1: 0.0, batch: 0.0}
    cpu = {1: 0.0, batch: 0.0}
    for rep in range(repeats):
        for step in (1, batch):
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            for k, i in enumerate(range(0, total, step)):
                pipeline(hr[i : i + step], 100_000 * rep + 1000 * step + k)
            _sync(device)
            wall[step] += time.perf_counter() - start
            cpu[step] += time.process_time() - start_cpu
    n = total * repeats
    return {step: (n / wall[step], 1000 * cpu[step] / n) for step in (1, batch)}


def main() -> None:
    """Run the benchmark on each requested device and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=128, help="images per pass (default 128)")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the batched mode (default 32)")
    parser.add_argument("--size", type=int, default=256, help="HR crop side in pixels (default 256)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="passes per mode, each with new seeds (default 3)"
    )
    parser.add_argument(
        "--device", default="cpu,cuda", help="comma-separated devices; cuda is skipped if absent"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    print(
        f"CPU: {cpu_model()} ({os.cpu_count()} logical cores, load average {os.getloadavg()[0]:.1f}); "
        f"torch {torch.__version__}; torch threads: {torch.get_num_threads()}"
    )
    pipeline = RealESRGANDegradation()
    for name in args.device.split(","):
        device = torch.device(name.strip())
        if device.type == "cuda":
            if not torch.cuda.is_available():
                print("cuda: no CUDA device visible; skipped")
                continue
            print(f"GPU: {torch.cuda.get_device_name(device)}")
        # warm-up: imports basicsr, builds DiffJPEG, lets kernels and caches settle
        warm = torch.rand(min(args.batch, args.total), 3, args.size, args.size, device=device)
        pipeline(warm, 12345)
        pipeline(warm[:1], 12346)
        res = measure(pipeline, device, args.total, args.batch, args.size, args.repeats)
        (one, one_cpu), (many, many_cpu) = res[1], res[args.batch]
        print(
            f"{device.type}: {args.size}x{args.size} crops, {args.total} images x {args.repeats} passes: "
            f"batch 1 {one:.1f} img/s ({one_cpu:.1f} CPU ms/img), "
            f"batch {args.batch} {many:.1f} img/s ({many_cpu:.1f} CPU ms/img); "
            f"ratio {many / one:.2f}x wall, {one_cpu / many_cpu:.2f}x CPU time"
        )


if __name__ == "__main__":
    main()
