"""Inference benchmark: one-step x4 preset (random weights), 256x192 LR -> 1024x768 SR.

Prints the hardware, then
  * CPU (fp32): wall time of one image and the peak RSS of a fresh process that only builds the model and
    upscales that image (``resource.getrusage``), next to the size of the score matrix that the reference's
    naive VQGAN mid-block attention would materialise for the same image (computed, not run);
  * CUDA (when available; bf16 autocast, fp16 where bf16 is unsupported): images/s and peak allocated GPU memory
    at batch 1 and batch 8 (the 8 images go through the networks as one batch).

Usage::

    .venv/bin/python benchmarks/inference.py              # CPU and, when present, CUDA
    .venv/bin/python benchmarks/inference.py --no-cpu     # CUDA only
    .venv/bin/python benchmarks/inference.py --preset tiny --no-cuda   # a quick smoke run

Targets (issue 3): CPU peak RSS <= 3 GB; one H100 >= 10 images/s one-step at 1024x768 output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

GIB = 1024**3


def hardware() -> dict[str, str]:
    """CPU model, core count, RAM, torch version and (when present) the CUDA device name."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_cores_visible": str(
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["ram"] = f"{pages * page_size / GIB:.1f} GiB"
    except (ValueError, OSError):
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["cuda_device"] = f"{props.name} ({props.total_memory / GIB:.0f} GiB)"
    return info


def test_image(batch: int, height: int, width: int):  # noqa: ANN201 - torch.Tensor (torch imported lazily)
    """A deterministic smooth-plus-texture ``(batch,3,height,width)`` LR image in [-1,1] (grey, R=G=B)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    base = 0.6 * torch.sin(3 * xx + 2 * yy) * torch.cos(2 * yy)
    noise = 0.1 * torch.randn((batch, 1, height, width), generator=gen)
    return (base + noise).clamp(-1, 1).expand(batch, 3, height, width).contiguous()


def naive_attention_bytes(height: int, width: int, bytes_per_entry: int) -> int:
    """Bytes of the N x N score matrix of one full self-attention over the f4 latent of an x4 output.

    The VQGAN sees the 4x-upsampled image and its mid block runs at 1/4 of that: N = height * width LR pixels.
    """
    n = height * width
    return n * n * bytes_per_entry


def cpu_child(preset: str, height: int, width: int, sampler: str, tile: int, overlap: int) -> None:
    """Run in a fresh process: build the model, upscale one image, print one JSON line with time and peak RSS."""
    import torch

    from difiisr.inference.settings import InferenceSettings
    from difiisr.inference.upscaler import Upscaler

    t0 = time.perf_counter()
    ups = Upscaler.from_random(preset, seed=0, device="cpu")
    build_s = time.perf_counter() - t0
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    y = test_image(1, height, width)
    t0 = time.perf_counter()
    out = ups.upscale_tensor(
        y, InferenceSettings(sampler=sampler, seed=0, tile=tile or None, tile_overlap=overlap, batch=1)
    )
    run_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(
        json.dumps(
            {
                "build_s": build_s,
                "run_s": run_s,
                "peak_rss_bytes": peak,
                "rss_after_build_bytes": rss_model,
                "out_shape": list(out.shape),
                "threads": torch.get_num_threads(),
            }
        )
    )


def run_cpu(preset: str, height: int, width: int, sampler: str, tile: int, overlap: int) -> dict[str, float]:
    """Start ``cpu_child`` in a fresh interpreter (so peak RSS is this work alone) and return its figures."""
    cmd = [sys.executable, __file__, "--child-cpu", "--preset", preset, "--lr", f"{width}x{height}"]
    cmd += ["--sampler", sampler, "--cpu-tiles", str(tile), "--tile-overlap", str(overlap)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"CPU benchmark child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cuda(
    preset: str, height: int, width: int, sampler: str, batches: list[int], repeats: int
) -> list[dict]:
    """Images/s and peak allocated GPU memory per batch size (bf16 autocast), after one warm-up call each."""
    import torch

    from difiisr.inference.settings import InferenceSettings
    from difiisr.inference.upscaler import Upscaler, resolve_dtype

    ups = Upscaler.from_random(preset, seed=0, device="cuda")
    results = []
    for batch in batches:
        y = test_image(batch, height, width).cuda()
        ups.upscale_tensor(
            y, InferenceSettings(sampler=sampler, seed=0, tile=None, batch=batch)
        )  # warm-up (kernels, allocator)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for r in range(repeats):
            ups.upscale_tensor(y, InferenceSettings(sampler=sampler, seed=r, tile=None, batch=batch))
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        results.append(
            {
                "batch": batch,
                "images_per_s": batch * repeats / elapsed,
                "s_per_call": elapsed / repeats,
                "peak_alloc_bytes": torch.cuda.max_memory_allocated(),
                "dtype": str(resolve_dtype(ups.device, "auto")).replace("torch.", ""),
            }
        )
        del y
        torch.cuda.empty_cache()
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse flags, print hardware and every figure; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="x4", help="model preset (default x4)")
    parser.add_argument("--lr", default="256x192", help="LR size WIDTHxHEIGHT (default 256x192 -> 1024x768)")
    parser.add_argument("--sampler", default="onestep", choices=["onestep", "ddim", "ancestral"])
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU run")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA run")
    parser.add_argument(
        "--cpu-tiles",
        default="0,128",
        help="CPU runs: tile sides in LR pixels, 0 = untiled (default 0,128)",
    )
    parser.add_argument("--tile-overlap", type=int, default=32, help="overlap of tiled CPU runs, LR pixels")
    parser.add_argument("--batches", default="1,8", help="CUDA batch sizes (default 1,8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed CUDA calls per batch size")
    parser.add_argument("--child-cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.lr.lower().split("x"))

    if args.child_cpu:
        cpu_child(args.preset, height, width, args.sampler, int(args.cpu_tiles), args.tile_overlap)
        return 0

    import torch

    from difiisr.models.preset import load_preset

    print("hardware:")
    for key, value in hardware().items():
        print(f"  {key}: {value}")
    print(
        f"workload: preset {args.preset}, sampler {args.sampler}, random weights, LR {width}x{height} -> "
        f"SR {4 * width}x{4 * height}"
    )

    if not args.no_cpu:
        for tile in (int(t) for t in args.cpu_tiles.split(",") if t):
            res = run_cpu(args.preset, height, width, args.sampler, tile, args.tile_overlap)
            how = "untiled" if not tile else f"tiles of {tile} LR px, overlap {args.tile_overlap}, batch 1"
            print(f"CPU (fp32, fresh process, {how}):")
            print(
                f"  model build {res['build_s']:.1f} s; one image {res['run_s']:.1f} s ({res['threads']} threads)"
            )
            print(
                f"  peak RSS {res['peak_rss_bytes'] / GIB:.2f} GiB = {res['peak_rss_bytes'] / 1e9:.2f} GB "
                f"(after building the model: {res['rss_after_build_bytes'] / GIB:.2f} GiB); target <= 3 GB"
            )
    if load_preset(args.preset).latent:
        print("reference layout (naive VQGAN mid-block attention, computed, not run):")
        for label, nbytes in (("fp32", 4), ("fp16", 2)):
            print(
                f"  one {label} N x N score matrix per image in encode and again in decode: N = {height * width:,}, "
                f"{naive_attention_bytes(height, width, nbytes) / GIB:.1f} GiB"
            )

    if not args.no_cuda:
        if not torch.cuda.is_available():
            print("CUDA: no device here; GPU figures not measured")
        else:
            batches = [int(b) for b in args.batches.split(",") if b]
            for row in run_cuda(args.preset, height, width, args.sampler, batches, args.repeats):
                print(
                    f"CUDA ({row['dtype']} autocast) batch {row['batch']}: {row['images_per_s']:.2f} images/s "
                    f"({row['s_per_call']:.3f} s per call), peak allocated {row['peak_alloc_bytes'] / GIB:.2f} GiB"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
