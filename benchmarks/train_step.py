"""Training model-step throughput on one device: samples/s and peak memory of the x4 step itself.

One step = conditioning (VQGAN encode of HR and the bicubic-upsampled LR, no grad) + ``compute_losses`` (the
training loss of ``difiisr.training.loop``) + backward + AdamW, in bf16 autocast on CUDA (fp32 on CPU), on random
smooth 256^2 HR crops with their bicubic x1/4 LR. Data loading and the online Real-ESRGAN degradation are not in
it: ``benchmarks/training.py`` measures the whole ``difiisr train`` process (it needs basicsr). Random weights:
throughput does not depend on the values. Each micro-batch size runs ``--warmup`` untimed steps, then ``--steps``
timed ones (CUDA synchronised).

    .venv/bin/python benchmarks/train_step.py                       # x4 on CUDA, micro-batches 8 16 32
    .venv/bin/python benchmarks/train_step.py --preset tiny --device cpu --batches 2 --crop 64 --steps 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import hardware  # noqa: E402 - the hardware table every benchmark prints


def smooth_batch(n: int, side: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    """``(n,3,side,side)`` in [-1,1]: random noise blurred by upsampling a 1/8-size draw (image-like spectra)."""
    low = torch.rand(n, 1, side // 8, side // 8, generator=generator) * 2 - 1
    img = F.interpolate(low, size=(side, side), mode="bicubic", align_corners=False).clamp(-1, 1)
    return img.expand(n, 3, side, side).contiguous().to(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="x4")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--crop", type=int, default=256, help="HR crop side (the x4 recipe's 256)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    from difiisr.diffusion import ResShiftDiffusion
    from difiisr.models.builder import build_networks
    from difiisr.models.conditioning import Conditioner
    from difiisr.models.preset import load_preset
    from difiisr.training.loop import compute_losses

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    print("hardware:", ", ".join(f"{k} {v}" for k, v in hardware().items()))
    preset = load_preset(args.preset)
    unet, autoencoder = build_networks(preset, seed=0)
    unet = unet.to(device).train()
    if autoencoder is not None:
        autoencoder = autoencoder.to(device).eval().requires_grad_(False)
    conditioner = Conditioner(preset, autoencoder)
    diffusion = ResShiftDiffusion(preset.diffusion)
    optim = torch.optim.AdamW(unet.parameters(), lr=5e-5)
    params = sum(p.numel() for p in unet.parameters())
    precision = "bf16 autocast" if cuda else "fp32"
    print(f"preset {preset.name}: UNet {params / 1e6:.1f} M parameters, {precision}, {args.crop}^2 HR crops")
    generator = torch.Generator().manual_seed(0)

    def step(n: int) -> None:
        hr = smooth_batch(n, args.crop, device, generator)
        lr = F.interpolate(
            hr, scale_factor=1 / preset.sf, mode="bicubic", antialias=True, align_corners=False
        )
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            z0, zy, lq = conditioner.training_pair(lr, hr)
        t = torch.randint(0, diffusion.num_timesteps, (n,), generator=generator).to(device)
        noise = torch.randn(z0.shape, generator=generator).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = compute_losses(diffusion, unet, z0, zy, lq, t, noise)["loss"]
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)

    for n in args.batches:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            for _ in range(args.warmup):
                step(n)
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(n)
            if cuda:
                torch.cuda.synchronize(device)
        except torch.OutOfMemoryError:
            print(f"  micro-batch {n:3d}: out of memory")
            break
        seconds = (time.perf_counter() - start) / args.steps
        peak = f", peak allocated {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if cuda else ""
        print(f"  micro-batch {n:3d}: {n / seconds:8.1f} samples/s ({seconds * 1000:.0f} ms/step){peak}")


if __name__ == "__main__":
    main()
