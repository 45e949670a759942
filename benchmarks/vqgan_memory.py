"""Peak CPU memory of the VQGAN-f4 encode and decode, plain vs lean path (x4 autoencoder config, random weights, fp32).

Each (stage, path) runs in a fresh interpreter that builds the autoencoder, then runs one call under
``torch.inference_mode``; it reports the RSS after the build and the peak RSS (``resource.getrusage``
``ru_maxrss``, Linux KiB) of the whole process, the difference (what the call itself added at its peak), the
wall time and an MD5 of the output's bytes (equal digests: bit-identical outputs).

Paths: ``plain`` runs the plain modules (``quant_conv(encoder(x))``, ``decoder(post_quant_conv(quantize(z)))``),
as training and accelerators do; ``lean`` runs ``VQGANf4.encode``/``decode``, which on CPU under inference_mode
is ``difiisr.models.vqgan_lean``: what inference uses.

Usage::

    .venv/bin/python benchmarks/vqgan_memory.py                       # encode 1x3x1024x768, decode 1x3x256x192
    .venv/bin/python benchmarks/vqgan_memory.py --scale 0.5           # half the sides (quick, ~1/4 memory)
    .venv/bin/python benchmarks/vqgan_memory.py --impl /tmp/old_vqgan.py   # measure another vqgan.py file

``--impl`` loads ``VQGANf4``/``VQGANConfig`` from the given file (e.g. ``git show REV:src/difiisr/models/vqgan.py
> /tmp/old_vqgan.py``) and measures its ``encode``/``decode`` (path ``lean`` only), so a before/after comparison
runs with the same script; equal digests then show that both files compute the same numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

GIB = 1024**3
PATHS = ("plain", "lean")


def _load_impl(path: str | None):  # noqa: ANN202 - module (imported lazily)
    if not path:
        import difiisr.models.vqgan as module

        return module
    spec = importlib.util.spec_from_file_location("vqgan_impl", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"--impl {path}: not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules["vqgan_impl"] = module  # dataclasses needs the module registered
    spec.loader.exec_module(module)
    return module


def child(stage: str, path: str, height: int, width: int, impl: str | None) -> None:
    """In a fresh process: build the x4 VQGAN (seed 0), run one ``stage`` call on ``path``, print one JSON line."""
    import torch

    module = _load_impl(impl)
    torch.manual_seed(0)
    net = module.VQGANf4(module.VQGANConfig()).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    if stage == "encode":
        x = torch.rand((1, 3, height, width), generator=gen) * 2 - 1
        calls = {"plain": lambda: net.quant_conv(net.encoder(x)), "lean": lambda: net.encode(x)}
    else:
        x = torch.randn((1, 3, height // 4, width // 4), generator=gen) * 0.02
        calls = {
            "plain": lambda: net.decoder(net.post_quant_conv(net.quantize(x))),
            "lean": lambda: net.decode(x),
        }
    rss_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = calls[path]()
    run_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    digest = hashlib.md5(out.contiguous().numpy().tobytes()).hexdigest()
    print(
        json.dumps(
            {
                "stage": stage,
                "path": path,
                "in_shape": list(x.shape),
                "out_shape": list(out.shape),
                "rss_after_build_bytes": rss_build,
                "peak_rss_bytes": peak,
                "run_s": run_s,
                "md5": digest,
                "threads": torch.get_num_threads(),
            }
        )
    )


def run_stage(stage: str, path: str, height: int, width: int, impl: str | None) -> dict:
    """Run ``child`` in a fresh interpreter and return its figures."""
    cmd = [sys.executable, __file__, "--child", stage, "--paths", path, "--size", f"{width}x{height}"]
    if impl:
        cmd += ["--impl", impl]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{stage}/{path} child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run each (stage, path) in a fresh process, print hardware and figures; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="768x1024", help="image size WIDTHxHEIGHT (default 768x1024)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply both sides (rounded to 4)")
    parser.add_argument("--stages", default="encode,decode", help="comma list of encode, decode")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma list of plain, lean (default both)")
    parser.add_argument(
        "--impl", default=None, help="vqgan.py file to measure instead of difiisr's (lean only)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    paths = [p for p in args.paths.split(",") if p]
    if unknown := sorted(set(paths) - set(PATHS)):
        parser.error(f"--paths: unknown {unknown}; choose from {list(PATHS)}")
    if args.impl:
        paths = ["lean"]  # another file's encode/decode; its plain modules may take its own lean path
    if args.child:
        child(args.child, paths[0], height, width, args.impl)
        return 0
    width, height = (max(4, round(v * args.scale / 4) * 4) for v in (width, height))

    import torch

    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    print(f"hardware: {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"implementation: {args.impl or 'difiisr.models.vqgan (+ vqgan_lean)'}")
    for stage in (s for s in args.stages.split(",") if s):
        added: dict[str, float] = {}
        for path in paths:
            res = run_stage(stage, path, height, width, args.impl)
            base, peak = res["rss_after_build_bytes"], res["peak_rss_bytes"]
            added[path] = (peak - base) / GIB
            print(
                f"{stage} {path:5s} {tuple(res['in_shape'])} -> {tuple(res['out_shape'])}: peak RSS "
                f"{peak / GIB:.2f} GiB (after build {base / GIB:.2f} GiB, call adds {added[path]:.2f} GiB), "
                f"{res['run_s']:.1f} s, md5 {res['md5'][:12]}"
            )
        if len(added) == 2 and added["plain"] > 0:
            print(
                f"{stage}: the lean call adds {added['lean'] / added['plain']:.0%} of what the plain call adds"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
