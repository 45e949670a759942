"""Seconds per image and peak GPU memory of x4 ddim without guidance and with x0 / xt guidance (random weights).

.venv/bin/python benchmarks/guidance_speed.py                    # x4, 256x192 LR -> 1024x768, CUDA
.venv/bin/python benchmarks/guidance_speed.py --preset tiny --device cpu --lr 32x32 --repeats 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import hardware  # noqa: E402 - the hardware table every benchmark prints


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="x4")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--lr", default="256x192", help="LR size WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from difiisr.inference.settings import InferenceSettings
    from difiisr.inference.upscaler import Upscaler
    from difiisr.models.preset import load_preset

    print("hardware:", ", ".join(f"{k} {v}" for k, v in hardware().items()))
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    width, height = (int(v) for v in args.lr.split("x"))
    upscaler = Upscaler.from_random(load_preset(args.preset), seed=0, device=str(device))
    y = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    base = InferenceSettings(sampler="ddim", tile=None)
    runs = {
        "ddim, unguided": base,
        "ddim, guided x0": base.replace(guidance="lr-consistency"),
        "ddim, guided xt": base.replace(
            guidance="lr-consistency", guidance_space="xt", guidance_scale=1000.0
        ),
        "ddim, guided xt, checkpointed decoder": base.replace(
            guidance="lr-consistency", guidance_space="xt", guidance_scale=1000.0, guidance_checkpoint=True
        ),
    }
    print(f"preset {args.preset}, {width}x{height} LR, batch 1, no tiling, {args.repeats} timed calls each")
    for name, settings in runs.items():
        upscaler.upscale_tensor(y, settings)  # warm-up
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        for _ in range(args.repeats):
            upscaler.upscale_tensor(y, settings)
        if cuda:
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - start) / args.repeats
        peak = f", peak allocated {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if cuda else ""
        print(f"  {name:40} {seconds:7.3f} s/image{peak}")


if __name__ == "__main__":
    main()
