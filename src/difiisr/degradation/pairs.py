"""Write an LR/HR pairs folder (``hr/NAME.png``, ``lr/NAME.png``, ``manifest.jsonl``) from HR images.

Layout: ``difiisr.data.pairs`` owns it (names, manifest lines, settings file) and every reader uses it. HR and LR
share the file name, HR size = sf x LR size exactly, 16-bit HR gives 16-bit LR, grey HR gives grey LR. In each
manifest line ``seed`` is the pair's own seed: ``RealESRGANDegradation(config)(hr, [seed])`` on the written HR
reproduces the LR (before the grey conversion of grey images). ``params`` records the source file, variant, base seed, crop and every drawn
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
refused rather than mixed. Temp files that killed writers left in the folder are removed first.

Bad HR files. An HR file that cannot be read or degraded (empty, truncated, not an image, over the
decompression-bomb limit, unsupported mode, too small for the protocol) is reported in
``DegradeSummary.failures`` with its reason and gets no pairs; every other file is processed, and the manifest
lists what was written. Nothing is created in the output folder before the first pair is ready to be written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import torch
from tqdm import tqdm

from difiisr.config import to_mapping
from difiisr.data.pairs import (
    HR_DIR,
    LR_DIR,
    MANIFEST_NAME,
    SETTINGS_NAME,
    PairsError,
    manifest_entry,
    manifest_line,
    pair_paths,
    read_manifest,
    read_settings,
    write_manifest,
    write_settings,
)
from difiisr.degradation.bicubic import bicubic_downsample
from difiisr.degradation.config import RealESRGANConfig
from difiisr.degradation.crop import CropParams, apply_crop, sample_crop
from difiisr.degradation.realesrgan import RealESRGANDegradation
from difiisr.degradation.seeding import crop_rng, derive_seed
from difiisr.io import (
    ImageReadError,
    LoadedImage,
    image_to_tensor,
    list_images,
    read_image,
    tensor_to_image,
    write_image,
)
from difiisr.storage import remove_stale_temp_files

log = logging.getLogger(__name__)

PROTOCOLS = ("realesrgan", "bicubic")

Protocol = Literal["realesrgan", "bicubic"]


@dataclass(frozen=True)
class SourceFailure:
    """An HR file that gave no pairs, and why (a short human sentence with the fix where there is one)."""

    source: Path
    reason: str

    def line(self) -> str:
        """``PATH: reason``."""
        return f"{self.source}: {self.reason}"


@dataclass(frozen=True)
class DegradeSummary:
    """What ``degrade_folder`` did: pair counts (``written + skipped == total``), bad HR files, and where."""

    out_dir: Path
    manifest: Path
    protocol: str
    sources: int
    variants: int
    written: int
    skipped: int
    failures: tuple[SourceFailure, ...] = ()

    @property
    def total(self) -> int:
        """Pairs in the folder after the run (sources x variants, less the failed sources' pairs)."""
        return self.written + self.skipped

    def line(self) -> str:
        """One-line human summary."""
        failed = f", {len(self.failures)} HR file(s) failed" if self.failures else ""
        return (
            f"degrade: {self.written} pairs written, {self.skipped} already there{failed} ({self.protocol}, "
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
    for folder in (out, out / HR_DIR, out / LR_DIR):
        remove_stale_temp_files(folder)
    entries = read_manifest(out)
    done = {j.name for j in jobs if j.name in entries and all(p.is_file() for p in pair_paths(out, j.name))}
    pending = [j for j in jobs if j.name not in done]
    log.info("%s: %d pairs to write, %d already there", out, len(pending), len(done))

    writer = _ManifestWriter(out, settings, entries)
    if entries:
        writer.start()  # drops a torn last line of an interrupted run before appending
    pipeline = RealESRGANDegradation(cfg) if protocol == "realesrgan" else None
    making = _PairMaker(out, cfg, crop, seed, protocol, pipeline, dev)
    with tqdm(total=len(pending), desc=f"degrade ({protocol})", unit="pair", disable=not progress) as bar:
        try:
            for batch in _batches(pending, batch_size):
                made = making.pairs(batch)
                if made:
                    writer.start()  # degradation.json before the first pair's files
                for _, hr, lr, paths in made:
                    for path, pixels in zip(paths, (hr, lr), strict=True):
                        write_image(path, pixels)
                writer.append([entry for entry, *_ in made])
                bar.update(len(batch))
        finally:
            writer.close()
    return DegradeSummary(
        out,
        out / MANIFEST_NAME,
        protocol,
        len(sources),
        variants,
        writer.written,
        len(done),
        tuple(making.failures.values()),
    )


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
    old = read_settings(out)
    if old is None:
        if (out / MANIFEST_NAME).is_file():
            raise PairsError(
                f"{out}: has a {MANIFEST_NAME} but no {SETTINGS_NAME}; write the pairs to a new folder"
            )
        return
    new = json.loads(json.dumps(settings))  # the JSON form (tuples -> lists) of this run's settings
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise PairsError(
            f"{out}: holds pairs made with other settings ({', '.join(diff)} differ, see {out / SETTINGS_NAME}); "
            "write to a new --out folder or remove this one"
        )


class _ManifestWriter:
    """Appends manifest lines (flushed and fsynced per batch); creates the folder's files on the first pair.

    ``start`` writes ``degradation.json`` and the sorted manifest of the entries already there; ``close`` rewrites
    the manifest sorted. Nothing is created when no pair is ever written and the folder held none.
    """

    def __init__(self, out: Path, settings: dict[str, Any], entries: dict[str, dict[str, Any]]) -> None:
        self.out, self.settings, self.entries = out, settings, entries
        self.written = 0
        self._fh: TextIO | None = None

    def start(self) -> None:
        if self._fh is not None:
            return
        (self.out / HR_DIR).mkdir(parents=True, exist_ok=True)
        (self.out / LR_DIR).mkdir(parents=True, exist_ok=True)
        write_settings(self.out, self.settings)
        self._fh = open(write_manifest(self.out, self.entries), "a", encoding="utf-8")  # noqa: SIM115

    def append(self, new: list[dict[str, Any]]) -> None:
        if not new:
            return
        self.start()
        assert self._fh is not None
        for entry in new:
            self._fh.write(manifest_line(entry))
            self.entries[entry["name"]] = entry
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.written += len(new)

    def close(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        write_manifest(self.out, self.entries)


class _PairMaker:
    """Reads, crops and degrades the pairs of a batch of jobs; bad HR files go to ``failures``."""

    def __init__(
        self,
        out: Path,
        cfg: RealESRGANConfig,
        crop: int | None,
        base_seed: int,
        protocol: str,
        pipeline: RealESRGANDegradation | None,
        device: torch.device,
    ) -> None:
        self.out, self.cfg, self.crop, self.base_seed = out, cfg, crop, base_seed
        self.protocol, self.pipeline, self.device = protocol, pipeline, device
        self.failures: dict[Path, SourceFailure] = {}
        self._cache: dict[Path, LoadedImage] = {}

    def _fail(self, source: Path, reason: str) -> None:
        if source not in self.failures:
            log.warning("%s: %s; no pairs made from it", source, reason)
            self.failures[source] = SourceFailure(source, reason)

    def _prepare(self, job: _Job) -> tuple[_Job, LoadedImage, CropParams, np.ndarray] | None:
        """The job's image, crop and cropped HR pixels, or None (failure recorded) for a bad HR file."""
        if job.source in self.failures:
            return None
        if job.source not in self._cache:
            self._cache.clear()  # jobs come image by image: keep only the current image
            try:
                self._cache[job.source] = read_image(job.source)
            except ImageReadError as exc:
                self._fail(job.source, exc.reason)
                return None
        img = self._cache[job.source]
        try:
            cp = _sample_crop(job, img, self.cfg, self.crop, self.protocol)
        except ValueError as exc:
            self._fail(job.source, str(exc))
            return None
        return job, img, cp, apply_crop(img.pixels, cp)

    def _entry(self, job: _Job, img: LoadedImage, cp: CropParams, params: dict[str, Any]) -> dict[str, Any]:
        record = {
            "source": job.source.name,
            "variant": job.variant,
            "base_seed": self.base_seed,
            "sf": self.cfg.sf,
            "bit_depth": img.bit_depth,
            "crop": cp.to_dict(),
            **params,
        }
        return manifest_entry(job.name, self.protocol, job.seed, record)

    def pairs(
        self, batch: list[_Job]
    ) -> list[tuple[dict[str, Any], np.ndarray, np.ndarray, tuple[Path, Path]]]:
        """The pairs of ``batch`` that could be made: manifest entry, HR and LR pixels, and their two file paths."""
        prepared = [p for p in map(self._prepare, batch) if p is not None]
        if self.protocol == "bicubic":
            lrs = {k: bicubic_downsample(hr, self.cfg.sf) for k, (_, _, _, hr) in enumerate(prepared)}
            records = dict.fromkeys(lrs, {"resize": "PIL bicubic"})
        else:
            lrs, records = self._degrade(prepared)
        return [
            (self._entry(job, img, cp, records[k]), hr, lrs[k], pair_paths(self.out, job.name))
            for k, (job, img, cp, hr) in enumerate(prepared)
            if k in lrs
        ]

    def _degrade(
        self, prepared: list[tuple[_Job, LoadedImage, CropParams, np.ndarray]]
    ) -> tuple[dict[int, np.ndarray], dict[int, dict[str, Any]]]:
        """Real-ESRGAN LR pixels and drawn parameters by index into ``prepared`` (failed images left out)."""
        assert self.pipeline is not None
        # one pipeline call per group of equally sized crops (every image is degraded alone: resize_scope="image");
        # the pipeline refuses images by their size only, so a refused group fails each of its images
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, (_, _, _, hr) in enumerate(prepared):
            groups.setdefault((*hr.shape, hr.dtype.itemsize), []).append(k)
        results: dict[int, np.ndarray] = {}
        records: dict[int, dict[str, Any]] = {}
        for members in groups.values():
            levels = 65535 if prepared[members[0]][3].dtype == np.uint16 else 255
            x = ((image_to_tensor([prepared[k][3] for k in members]) + 1.0) / 2.0).to(self.device)
            try:
                lr, recs = self.pipeline(x, [prepared[k][0].seed for k in members], levels=levels)
            except ValueError as exc:
                for k in members:
                    self._fail(prepared[k][0].source, str(exc))
                continue
            for k, t, rec in zip(members, lr, recs, strict=True):
                hr = prepared[k][3]
                results[k] = tensor_to_image(
                    t * 2.0 - 1.0, bit_depth=8 if levels == 255 else 16, channels=1 if hr.ndim == 2 else 3
                )
                rec.pop("seed")
                records[k] = rec
        return results, records


def _sample_crop(
    job: _Job, img: LoadedImage, cfg: RealESRGANConfig, crop: int | None, protocol: str
) -> CropParams:
    flips = protocol == "realesrgan"  # the bicubic test protocol never flips
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
