"""Batch upscaling benchmark: local folder -> local folder against S3 -> S3 on a local SeaweedFS, side by side.

For each device (CPU with the ``tiny`` preset; CUDA with ``x4`` when a GPU is present; random weights) it runs
``difiisr batch-upscale`` as a fresh process over the same N synthetic thermal frames (``generate_scene``, 8-bit
grey), once from a local folder into a local folder and once from ``s3://bench/in/`` into ``s3://bench/out-*/``
on a SeaweedFS started here on 127.0.0.1, alternating the two ``--repeat`` times. It prints

- images/s of each run (the job's own figure: upscaled images over the wall time of the loop, which includes the
  listing, the skip checks, downloads, decoding, encoding and uploads, but not the model load),
- the ratio S3/local of the best runs (target >= 0.9: I/O hides behind compute),
- the peak RSS of each run's process (``os.wait4``),
- the time to list 10,000 objects on the local S3 (``S3Store.list_keys``, 10 pages), and the peak Python heap
  while streaming them (``tracemalloc``: the listing does not hold the keys).

The S3 server runs on the same machine and competes for its CPU cores; the figure is a lower bound for a
separate object store. Usage::

    .venv/bin/python benchmarks/batch.py                   # 200 inputs, CPU (+ CUDA when present)
    .venv/bin/python benchmarks/batch.py --n 40 --list 2000 --no-cuda   # a quick smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import hardware  # noqa: E402 - the hardware table every benchmark prints

MIB = 1024**2
BUCKET = "bench"
EXE = str(Path(sys.executable).with_name("difiisr"))


def make_inputs(folder: Path, n: int, size: int) -> None:
    """``n`` seeded synthetic thermal frames (8-bit grey, ``size`` x ``size`` LR) as PNG files."""
    from difiisr.data.synthetic import generate_scene
    from difiisr.io import write_image

    for i in range(n):
        write_image(folder / f"cam{i % 4}" / f"frame_{i:05d}.png", generate_scene(size, size, seed=i))


def make_model(folder: Path, preset_name: str) -> Path:
    """A model folder with random weights of ``preset_name`` (seed 0)."""
    from difiisr.models.builder import build_networks
    from difiisr.models.bundle import save_model_folder
    from difiisr.models.preset import load_preset

    preset = load_preset(preset_name)
    unet, autoencoder = build_networks(preset, seed=0)
    return save_model_folder(
        folder, preset, unet.state_dict(), None if autoencoder is None else autoencoder.state_dict()
    )


def upload_tree(client: Any, folder: Path, prefix: str, workers: int = 16) -> int:
    """Upload every file below ``folder`` to ``s3://bench/PREFIX``; returns the count."""
    files = [p for p in folder.rglob("*") if p.is_file()]

    def put(path: Path) -> None:
        client.put_object(
            Bucket=BUCKET, Key=prefix + path.relative_to(folder).as_posix(), Body=path.read_bytes()
        )

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, files))
    return len(files)


def run_job(args: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    """Run ``difiisr batch-upscale ARGS``; (exit code, peak RSS in MiB of that process)."""
    with log.open("wb") as out:
        proc = subprocess.Popen([EXE, "batch-upscale", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def job_summary(uri: str, client: Any) -> dict[str, Any]:
    """The newest summary JSON under the report location ``uri`` (a folder or s3://bench/PREFIX/)."""
    if uri.startswith("s3://"):
        prefix = uri.split(f"s3://{BUCKET}/", 1)[1]
        keys = sorted(
            o["Key"]
            for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
            if o["Key"].endswith(".summary.json")
        )
        return json.loads(client.get_object(Bucket=BUCKET, Key=keys[-1])["Body"].read())
    return json.loads(sorted(Path(uri).glob("*.summary.json"))[-1].read_text())


def bench_device(
    device: str,
    preset: str,
    size: int,
    opts: argparse.Namespace,
    root: Path,
    env: dict[str, str],
    client: Any,
) -> None:
    """Local and S3 runs for one device over its own inputs; prints one line per run and the ratio."""
    make_inputs(root / f"in-{device}", opts.n, size)
    upload_tree(client, root / f"in-{device}", f"in-{device}/")
    model = make_model(root / f"model-{preset}", preset)
    batch = opts.batch or (8 if device == "cuda" else 4)
    common = ["--model", str(model), "--device", device, "--batch", str(batch), "--no-progress"]
    if opts.tile:
        common += ["--tile", str(opts.tile)]
    print(f"\n{device} / preset {preset} / {opts.n} inputs of {size}x{size} LR / --batch {batch}:")
    print(f"  {'run':<14}{'images/s':>10}{'loop s':>9}{'peak RSS':>11}  exit")
    best: dict[str, float] = {}
    for rep in range(opts.repeat):
        for mode in ("local", "s3"):
            if mode == "local":
                inp, out = str(root / f"in-{device}"), str(root / f"out-{device}-{rep}")
                report = f"{out}/_reports"
            else:
                inp, out = f"s3://{BUCKET}/in-{device}/", f"s3://{BUCKET}/out-{device}-{rep}/"
                report = f"{out}_reports/"
            code, rss = run_job([*common, "--input", inp, "--output", out], env, root / f"{mode}-{rep}.log")
            if code != 0:
                print(f"  {mode}-{rep}: exit {code}; log {root / f'{mode}-{rep}.log'}")
                sys.exit(1)
            summary = job_summary(report, client)
            ips = float(summary["images_per_s"])
            best[mode] = max(best.get(mode, 0.0), ips)
            print(
                f"  {mode + '-' + str(rep):<14}{ips:>10.3f}{summary['elapsed_s']:>9.1f}{rss:>8.0f} MiB  {code}"
            )
    print(f"  S3/local images/s (best of {opts.repeat}): {best['s3'] / best['local']:.3f}  (target >= 0.9)")


def bench_listing(count: int, root: Path, client: Any) -> None:
    """Upload ``count`` 1-byte objects, then time streaming them back with ``S3Store.list_keys``."""
    from difiisr.storage.store import S3Store
    from difiisr.storage.uri import parse_location

    folder = root / "list"
    for i in range(count):
        (folder / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (folder / f"d{i % 10}" / f"k{i:06d}.png").write_bytes(b"x")
    t0 = time.perf_counter()
    upload_tree(client, folder, "list/")
    upload_s = time.perf_counter() - t0
    store = S3Store(parse_location(f"s3://{BUCKET}/list/"))
    store.check(write=False)  # builds the boto3 client outside the measured heap and time
    tracemalloc.start()
    t0 = time.perf_counter()
    seen = sum(1 for _ in store.list_keys())
    list_s = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == count, f"listed {seen} of {count} keys"
    print(
        f"\nlisting {count} objects on the local S3: {list_s:.2f} s ({count / list_s:,.0f} keys/s, "
        f"{-(-count // 1000)} pages); peak Python heap while streaming {peak / MIB:.1f} MiB "
        f"(uploading them took {upload_s:.1f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse flags, start the S3 server, print hardware and every figure; returns 0."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200, help="synthetic inputs (default 200)")
    parser.add_argument(
        "--size", type=int, default=0, help="LR side in pixels (default 32 on CPU, 256 on CUDA)"
    )
    parser.add_argument(
        "--batch", type=int, default=0, help="--batch of the job (default 4 on CPU, 8 on CUDA)"
    )
    parser.add_argument(
        "--tile", type=int, default=0, help="--tile of the job (default: the settings' default)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="alternating local/S3 rounds (default 1)")
    parser.add_argument("--list", type=int, default=10_000, help="objects to list (default 10000; 0 = skip)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU/tiny runs")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA/x4 runs")
    opts = parser.parse_args(argv)

    import torch

    from difiisr.stack import Credentials, SeaweedFS

    print("hardware:")
    for key, value in hardware().items():
        print(f"  {key}: {value}")
    print(f"  load average (1/5/15 min) at start: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="difiisr-bench-batch-") as tmp:
        root = Path(tmp)
        server = SeaweedFS(root / "s3", Credentials.generate(), s3_port=0, buckets=(BUCKET,))
        server.start(timeout=120)
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(server.client_env(), TMPDIR=str(root))
            os.environ.update(server.client_env())
            client = server.client()
            cuda = torch.cuda.is_available() and not opts.no_cuda
            print(f"S3 server: SeaweedFS on {server.endpoint_url} (same machine)")
            if not opts.no_cpu:
                bench_device("cpu", "tiny", opts.size or 32, opts, root, env, client)
            if cuda:
                bench_device("cuda", "x4", opts.size or 256, opts, root, env, client)
            elif not opts.no_cuda:
                print("\ncuda / x4: skipped (no CUDA device here)")
            if opts.list:
                bench_listing(opts.list, root, client)
            self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"\nthis driver process: peak RSS {self_rss:.0f} MiB")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
