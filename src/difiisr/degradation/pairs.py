"""Write an LR/HR pairs folder (``hr/NAME.png``, ``lr/NAME.png``, ``manifest.jsonl``) from HR images.

Layout (the contract every reader relies on): HR and LR share the file name, HR size = sf x LR size exactly,
16-bit HR gives 16-bit LR, grey HR gives grey LR. Each manifest line is
``{"name", "hr": "hr/NAME.png", "lr": "lr/NAME.png", "protocol", "seed", "params"}``. ``seed`` is the pair's
own seed: ``RealESRGANDegradation(config)(hr, [seed])`` on the written HR reproduces the LR (before the grey
conversion of grey images). ``params`` records the source file, variant, base seed, crop and every drawn
degradation parameter. The run's settings go to ``degradation.json``.

Pair seeds come from the file *name* rather than its index in the folder listing, so adding or removing other
HR files never changes an existing pair.

Reproducibility. Variant k of the HR file F gets the seed ``derive_seed(seed, F.name, k)``: it depends on
neither the other images nor the batch size nor the order of work, so a rerun or a resumed run writes
identical files. For that the Real-ESRGAN pipeline runs with ``resize_scope="image"`` here (each pair's resize
is its own draw; see ``realesrgan.py``), and ``batch_size`` only sets how many pairs are read, degraded,
written and recorded per step: it never changes an output.

Resume. Each file is written atomically (temp file + rename), then the pair's manifest line is appended and
flushed; a pair counts as done only when both files and its manifest line exist, so an interrupted run loses
at most the pairs in flight and a rerun skips everything else. The manifest is rewritten sorted (atomically)
at the end. A rerun with different settings (protocol, seed, variants, crop, config) into the same folder is
refused rather than mixed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from difiisr.config import to_mapping
from difiisr.degradation.bicubic import bicubic_downsample
from difiisr.degradation.config import RealESRGANConfig
from difiisr.degradation.crop import CropParams, apply_crop, sample_crop
from difiisr.degradation.realesrgan import RealESRGANDegradation
from difiisr.degradation.seeding import crop_rng, derive_seed
from difiisr.io import LoadedImage, image_to_tensor, list_images, read_image, tensor_to_image, write_image
from difiisr.storage import atomic_write_text

log = logging.getLogger(__name__)

PROTOCOLS = ("realesrgan", "bicubic")
MANIFEST_NAME = "manifest.jsonl"
SETTINGS_NAME = "degradation.json"

Protocol = Literal["realesrgan", "bicubic"]


class PairsError(Exception):
    """The pairs folder cannot be written as asked; the message names the folder or file and the fix."""


@dataclass(frozen=True)
class DegradeSummary:
    """What ``degrade_folder`` did: pair counts (``written + skipped == total``) and where."""

    out_dir: Path
    manifest: Path
    protocol: str
    sources: int
    variants: int
    written: int
    skipped: int

    @property
    def total(self) -> int:
        """Pairs in the folder after the run (sources x variants)."""
        return self.written + self.skipped

    def line(self) -> str:
        """One-line human summary."""
        return (
            f"degrade: {self.written} pairs written, {self.skipped} already there ({self.protocol}, "
            f"{self.sources} HR image{'s' * (self.sources != 1)} x {self.variants} "
            f"variant{'s' * (self.variants != 1)}) -> {self.out_dir} (manifest {self.manifest})"
        )


@dataclass(frozen=True)
class _Job:
    source: Path
    variant: int
    name: str
    seed: int


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``/``"cuda"``/``"cuda:N"`` -> ``torch.device``; no visible GPU: ``PairsError``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise PairsError(f"device {device!r} is not a torch device ({exc}); use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PairsError(
            f"device {device!r} asked for, but torch sees no CUDA GPU (torch.cuda.is_available() is False); "
            "use --device cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise PairsError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


def pair_name(stem: str, variant: int, variants: int) -> str:
    """``stem`` for a single variant, else ``stem_vKK`` (zero-padded to at least 2 digits)."""
    if variants == 1:
        return stem
    return f"{stem}_v{variant:0{max(2, len(str(variants - 1)))}d}"


def degrade_folder(
    hr_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    protocol: Protocol = "realesrgan",
    variants: int = 1,
    crop: int | None = 256,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    progress: bool = True,
    config: RealESRGANConfig | None = None,
) -> DegradeSummary:
    """Make ``variants`` LR/HR pairs per image of ``hr_dir`` in ``out_dir`` (layout in the module docstring).

    ``crop``: square HR crop in pixels (a multiple of sf; small images are reflect-padded) or None for the
    whole image cut to a multiple of sf. ``config`` sets sf and the Real-ESRGAN parameters (default:
    method.md).
    """
    if protocol not in PROTOCOLS:
        raise PairsError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    for key, value in (("variants", variants), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PairsError(f"{key} must be an integer >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise PairsError(f"seed must be an integer >= 0, got {seed!r}")
    cfg = dataclasses.replace(config or RealESRGANConfig(), resize_scope="image")
    if crop is not None and (crop < 1 or crop % cfg.sf):
        raise PairsError(f"crop={crop} must be a positive multiple of sf={cfg.sf} (or None for whole images)")
    if protocol == "realesrgan" and crop is not None and crop < cfg.min_side:
        raise PairsError(
            f"crop={crop} is below {cfg.min_side}, the smallest HR side this Real-ESRGAN config can degrade "
            "(its blur kernels must fit the shrunken image); use a larger crop"
        )
    if protocol == "bicubic" and crop is None and variants > 1:
        raise PairsError(
            f"variants={variants} with the bicubic protocol and no crop would write {variants} identical pairs "
            "per image; use variants=1, or a crop size for random crops"
        )
    dev = resolve_device(device) if protocol == "realesrgan" else torch.device("cpu")
    hr_root, out = Path(hr_dir), Path(out_dir)
    if not hr_root.is_dir():
        raise PairsError(f"{hr_root}: HR folder not found")
    sources = list_images(hr_root)
    if not sources:
        raise PairsError(f"{hr_root}: no images (.png, .tif, .tiff, .jpg, .jpeg) found")
    jobs = _jobs(sources, variants, seed)

    settings = {
        "protocol": protocol,
        "seed": seed,
        "variants": variants,
        "crop": crop,
        "sf": cfg.sf,
        "config": to_mapping(cfg) if protocol == "realesrgan" else None,
    }
    _check_settings(out, settings)
    manifest_path = out / MANIFEST_NAME
    entries = _read_manifest(manifest_path)
    done = {
        j.name
        for j in jobs
        if j.name in entries
        and (out / "hr" / f"{j.name}.png").is_file()
        and (out / "lr" / f"{j.name}.png").is_file()
    }
    pending = [j for j in jobs if j.name not in done]
    log.info("%s: %d pairs to write, %d already there", out, len(pending), len(done))

    (out / "hr").mkdir(parents=True, exist_ok=True)
    (out / "lr").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SETTINGS_NAME, json.dumps(settings, indent=2, sort_keys=True) + "\n")
    _write_manifest(manifest_path, entries)  # drops a torn last line of an interrupted run before appending

    pipeline = RealESRGANDegradation(cfg) if protocol == "realesrgan" else None
    written = 0
    with (
        tqdm(total=len(pending), desc=f"degrade ({protocol})", unit="pair", disable=not progress) as bar,
        open(manifest_path, "a", encoding="utf-8") as manifest,
    ):
        for batch in _batches(pending, batch_size):
            new = _make_pairs(batch, out, cfg, crop, seed, protocol, pipeline, dev)
            for entry in new:
                manifest.write(json.dumps(entry, sort_keys=True) + "\n")
                entries[entry["name"]] = entry
            manifest.flush()
            os.fsync(manifest.fileno())
            written += len(new)
            bar.update(len(new))
    _write_manifest(manifest_path, entries)
    return DegradeSummary(out, manifest_path, protocol, len(sources), variants, written, len(done))


# ---------------------------------------------------------------------------------------------- internals


def _jobs(sources: list[Path], variants: int, seed: int) -> list[_Job]:
    by_stem: dict[str, Path] = {}
    for src in sources:
        if src.stem in by_stem:
            raise PairsError(
                f"{by_stem[src.stem]} and {src} would both be written as {src.stem}.png; rename one of them"
            )
        by_stem[src.stem] = src
    return [
        _Job(src, k, pair_name(src.stem, k, variants), derive_seed(seed, src.name, k))
        for src in sources
        for k in range(variants)
    ]


def _batches(jobs: list[_Job], size: int) -> Iterator[list[_Job]]:
    for start in range(0, len(jobs), size):
        yield jobs[start : start + size]


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / SETTINGS_NAME
    if not path.is_file():
        if (out / MANIFEST_NAME).is_file():
            raise PairsError(
                f"{out}: has a {MANIFEST_NAME} but no {SETTINGS_NAME}; write the pairs to a new folder"
            )
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PairsError(f"{path}: unreadable ({exc}); remove the folder or write to a new one") from None
    new = json.loads(json.dumps(settings))  # the JSON form (tuples -> lists) of this run's settings
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise PairsError(
            f"{out}: holds pairs made with other settings ({', '.join(diff)} differ, see {path}); "
            "write to a new --out folder or remove this one"
        )


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return entries
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entries[str(entry["name"])] = entry
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning(
                "%s:%d: unreadable manifest line (interrupted write?); that pair will be redone", path, lineno
            )
    return entries


def _write_manifest(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    text = "".join(json.dumps(entries[name], sort_keys=True) + "\n" for name in sorted(entries))
    atomic_write_text(path, text)


def _entry(job: _Job, protocol: str, base_seed: int, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": job.name,
        "hr": f"hr/{job.name}.png",
        "lr": f"lr/{job.name}.png",
        "protocol": protocol,
        "seed": job.seed,
        "params": {"source": job.source.name, "variant": job.variant, "base_seed": base_seed, **params},
    }


def _make_pairs(
    batch: list[_Job],
    out: Path,
    cfg: RealESRGANConfig,
    crop: int | None,
    base_seed: int,
    protocol: str,
    pipeline: RealESRGANDegradation | None,
    device: torch.device,
) -> list[dict[str, Any]]:
    """Make and write the pairs of ``batch``; returns their manifest entries."""
    cache: dict[Path, LoadedImage] = {}
    prepared: list[tuple[_Job, LoadedImage, CropParams, np.ndarray]] = []
    for job in batch:
        if job.source not in cache:
            cache.clear()  # jobs come image by image: keep only the current image
            cache[job.source] = read_image(job.source)
        img = cache[job.source]
        cp = _sample_crop(job, img, cfg, crop, protocol)
        prepared.append((job, img, cp, apply_crop(img.pixels, cp)))

    entries = []
    if protocol == "bicubic":
        for job, img, cp, hr in prepared:
            lr = bicubic_downsample(hr, cfg.sf)
            params = {"sf": cfg.sf, "bit_depth": img.bit_depth, "crop": cp.to_dict(), "resize": "PIL bicubic"}
            entries.append(_write_pair(out, job, hr, lr, _entry(job, protocol, base_seed, params)))
        return entries

    assert pipeline is not None
    # one pipeline call per group of equally sized crops (every image is degraded alone: resize_scope="image")
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, (_, _, _, hr) in enumerate(prepared):
        groups.setdefault((*hr.shape, hr.dtype.itemsize), []).append(k)
    results: dict[int, np.ndarray] = {}
    records: dict[int, dict[str, Any]] = {}
    for members in groups.values():
        first = prepared[members[0]][3]
        levels = 65535 if first.dtype == np.uint16 else 255
        x = ((image_to_tensor([prepared[k][3] for k in members]) + 1.0) / 2.0).to(device)
        try:
            lr, recs = pipeline(x, [prepared[k][0].seed for k in members], levels=levels)
        except ValueError as exc:
            names = ", ".join(str(prepared[k][0].source) for k in members)
            raise PairsError(f"{names}: {exc}") from None
        for k, t, rec in zip(members, lr, recs, strict=True):
            hr = prepared[k][3]
            results[k] = tensor_to_image(
                t * 2.0 - 1.0, bit_depth=8 if levels == 255 else 16, channels=1 if hr.ndim == 2 else 3
            )
            rec.pop("seed")
            records[k] = rec
    for k, (job, img, cp, hr) in enumerate(prepared):
        params = {"sf": cfg.sf, "bit_depth": img.bit_depth, "crop": cp.to_dict(), **records[k]}
        entries.append(_write_pair(out, job, hr, results[k], _entry(job, protocol, base_seed, params)))
    return entries


def _sample_crop(
    job: _Job, img: LoadedImage, cfg: RealESRGANConfig, crop: int | None, protocol: str
) -> CropParams:
    flips = protocol == "realesrgan"  # the bicubic test protocol never flips
    try:
        return sample_crop(
            crop_rng(job.seed),
            img.height,
            img.width,
            crop=crop,
            sf=cfg.sf,
            crop_pad_size=cfg.crop_pad_size if flips else 0,
            use_hflip=cfg.use_hflip and flips,
            use_rot=cfg.use_rot and flips,
        )
    except ValueError as exc:
        raise PairsError(f"{job.source}: {exc}") from None


def _write_pair(
    out: Path, job: _Job, hr: np.ndarray, lr: np.ndarray, entry: dict[str, Any]
) -> dict[str, Any]:
    write_image(out / "hr" / f"{job.name}.png", hr)
    write_image(out / "lr" / f"{job.name}.png", lr)
    return entry
