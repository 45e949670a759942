"""The batch pipeline: skip/redo decision, prefetch (download + decode), upscale, encode + atomic upload.

``run_items(items, engine, ...)`` is the one loop behind ``difiisr upscale``, ``difiisr batch-upscale``, the
Kubeflow ``batch_upscale`` component and the CronJob (through ``inference.batch.run_batch``).

Threads (the model runs in the calling thread only, loaded once):

- ``readers`` threads: for each item, tidy the output's folder, read the output's record (file text chunks or
  S3 metadata) and decide with ``records.plan_output`` (skip an output made with the same model digest and
  settings digest; redo anything else); download and decode the inputs that need work;
- the calling thread: takes decoded images in order and upscales up to ``settings.batch`` of them per call of
  ``Upscaler.upscale_arrays`` (same-shaped images share network calls, tiles included);
- ``writers`` threads: encode with the input's bit depth and grey/RGB form, the record in the file (PNG text,
  TIFF description) and, on S3, in the object metadata, written atomically.

At most ``2 * readers + batch`` items are in flight and ``2 * writers`` outputs wait for upload, so memory is
bounded whatever the number of inputs. A bad input (unreadable, zero bytes, not an image, decompression bomb,
unsupported mode, vanished) fails alone with its reason; a storage failure that survives the retries, or a
permanent one, stops the whole job (``StorageError``, exit code ``JOB_FAILED``) after the items in flight.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import PurePosixPath
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from difiisr.errors import DifiisrError
from difiisr.inference.batch_report import ItemResult, ReportWriter
from difiisr.inference.records import (
    KEY_SOURCE,
    Action,
    OutputIdentity,
    OutputState,
    plan_output,
    refuse_stale,
)
from difiisr.inference.settings import InferenceSettings
from difiisr.inference.upscaler import Upscaler
from difiisr.io import ImageReadError, read_image, write_image
from difiisr.io.metadata import read_text_record
from difiisr.storage.s3 import ObjectNotFoundError, StorageError
from difiisr.storage.store import Store

log = logging.getLogger(__name__)

StalePolicy = Literal["redo", "refuse"]
_CONTENT_TYPES = {".png": "image/png", ".tif": "image/tiff", ".tiff": "image/tiff"}


@dataclasses.dataclass(frozen=True)
class BatchItem:
    """One input and where its output goes. ``key`` names the input in the report and the output's record."""

    key: str
    source: Store
    source_key: str
    target: Store
    target_key: str

    @property
    def input_uri(self) -> str:
        """The input's URI or path."""
        return self.source.uri(self.source_key)

    @property
    def output_uri(self) -> str:
        """The output's URI or path."""
        return self.target.uri(self.target_key)


@dataclasses.dataclass(frozen=True)
class Engine:
    """A loaded model and what its outputs record: the ``Upscaler`` and the ``OutputIdentity`` (model reference,
    weights digest, registry version, settings)."""

    upscaler: Upscaler
    identity: OutputIdentity

    @classmethod
    def create(
        cls, upscaler: Upscaler, model: str, settings: InferenceSettings, version: str | None = None
    ) -> Engine:
        """Check ``settings`` against the model (``SettingsError`` before any work) and build the identity."""
        upscaler.check(settings)
        identity = OutputIdentity(
            model=model,
            model_digest=upscaler.digest,
            settings=settings,
            preset=upscaler.preset.name,
            model_version=version,
        )
        return cls(upscaler, identity)

    @property
    def settings(self) -> InferenceSettings:
        """The inference settings every output is made with."""
        return self.identity.settings

    def report_fields(self) -> dict[str, Any]:
        """Model and settings identity repeated on every report line."""
        return {
            "model": self.identity.model,
            "model_version": self.identity.model_version,
            "model_digest": self.identity.model_digest,
            "settings_digest": self.settings.digest(),
        }


@dataclasses.dataclass
class Counts:
    """How many inputs were done, skipped and failed, and the wall time of the loop (s)."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    elapsed_s: float = 0.0

    @property
    def total(self) -> int:
        """Inputs seen."""
        return self.done + self.skipped + self.failed


@dataclasses.dataclass
class _Decoded:
    item: BatchItem
    pixels: np.ndarray
    reason: str
    seconds: dict[str, float]
    started: float


class _Cancelled(Exception):
    """The job is stopping; a worker returns without doing its item."""


def _output_state(
    item: BatchItem, identity: OutputIdentity, overwrite: bool
) -> tuple[Action, OutputState, dict[str, str] | None]:
    """Run or skip ``item`` given the record at its output (S3 metadata, else the file's text record)."""
    info = item.target.head(item.target_key)
    record = None
    if info is not None:
        record = dict(info.metadata) if info.metadata else None
        path = item.target.local_path(item.target_key)
        if record is None and path is not None:
            record = read_text_record(path)
    action, state = plan_output(identity, record, exists=info is not None, overwrite=overwrite)
    return action, state, record


def refuse_stale_outputs(items: Sequence[BatchItem], identity: OutputIdentity, *, overwrite: bool) -> None:
    """``StaleOutputError`` (naming --overwrite) when an output exists but was made differently (unless
    ``overwrite``): the policy of ``difiisr upscale``, checked for every item before any work."""
    if overwrite:
        return
    stale = []
    for item in items:
        _, state, record = _output_state(item, identity, overwrite)
        if state is OutputState.STALE:
            stale.append((item.output_uri, record))
    refuse_stale(identity, stale)


def _failure_reason(exc: BaseException) -> str:
    """A short reason for the report: our errors' messages as they are, others with their type."""
    if isinstance(exc, ImageReadError):
        return exc.reason
    if isinstance(exc, DifiisrError):
        return str(exc)
    text = str(exc)
    if "out of memory" in text.lower():
        return f"out of memory ({type(exc).__name__}); lower --batch or --tile"
    return f"{type(exc).__name__}: {text}"


class _Pipeline:
    def __init__(
        self,
        engine: Engine,
        *,
        overwrite: bool,
        report: ReportWriter | None,
        bar: Any,
        readers: int,
        writers: int,
        on_result: Callable[[ItemResult], None] | None,
    ) -> None:
        self.engine = engine
        self.overwrite = overwrite
        self.report = report
        self.bar = bar
        self.readers = max(1, readers)
        self.writers = max(1, writers)
        self.on_result = on_result
        self.counts = Counts()
        self.stop = threading.Event()
        self.claimed: dict[str, str] = {}  # output URI -> the key that makes it in this run (~200 B per item)

    # ------------------------------------------------------------------ results

    def record(self, result: ItemResult) -> None:
        setattr(self.counts, result.status, getattr(self.counts, result.status) + 1)
        if result.status == "failed":
            log.error("%s: %s", result.input, result.reason)
        if self.report is not None:
            self.report.add(result)
        if self.on_result is not None:
            self.on_result(result)
        self.bar.update(1)
        self.bar.set_postfix(
            done=self.counts.done, skipped=self.counts.skipped, failed=self.counts.failed, refresh=False
        )

    def _result(
        self, item: BatchItem, status: Any, reason: str, started: float, **seconds: float
    ) -> ItemResult:
        return ItemResult(
            key=item.key,
            input=item.input_uri,
            output=item.output_uri,
            status=status,
            reason=reason,
            seconds={**seconds, "total": time.perf_counter() - started},
        )

    # ------------------------------------------------------------------ stages

    def prepare(self, item: BatchItem, clash: str | None) -> _Decoded | ItemResult:
        """Reader thread: decide, then download and decode what needs work."""
        if self.stop.is_set():
            raise _Cancelled
        started = time.perf_counter()
        if clash is not None:
            return self._result(
                item,
                "failed",
                f"{clash} is also written to {item.output_uri} (same name once the extension is changed); "
                "rename one of them",
                started,
            )
        item.target.tidy(item.target_key)
        action, state, record = _output_state(item, self.engine.identity, self.overwrite)
        source = (record or {}).get(KEY_SOURCE)
        if state is OutputState.DONE and source not in (None, item.key):
            return self._result(
                item,
                "failed",
                f"{item.output_uri} already holds the output of {source} (same name once the extension is "
                "changed); rename one of them",
                started,
            )
        if action is Action.SKIP:
            return self._result(
                item, "skipped", "output exists, made with the same model and settings", started
            )
        reason = (
            "new output"
            if state is OutputState.MISSING
            else "redone: " + self.engine.identity.difference(record)
        )
        if self.overwrite and state is OutputState.DONE:
            reason = "redone: --overwrite"
        try:
            with item.source.fetch(item.source_key) as path:
                image = read_image(path)
        except ObjectNotFoundError:
            return self._result(item, "failed", "the input disappeared after it was listed", started)
        except StorageError:
            raise
        except ImageReadError as exc:
            return self._result(item, "failed", exc.reason, started)
        except Exception as exc:  # one input's failure never stops the others
            return self._result(item, "failed", _failure_reason(exc), started)
        read_s = time.perf_counter() - started
        return _Decoded(item, image.pixels, reason, {"read": read_s}, started)

    def upscale(self, group: list[_Decoded]) -> list[tuple[_Decoded, np.ndarray | BaseException]]:
        """Calling thread: one ``upscale_arrays`` call for the group; after a failure, each image alone."""
        settings = self.engine.settings
        t0 = time.perf_counter()
        try:
            outs = self.engine.upscaler.upscale_arrays([d.pixels for d in group], settings)
        except Exception as exc:
            if len(group) == 1:
                return [(group[0], exc)]
            log.warning("a group of %d images failed (%s); retrying them one by one", len(group), exc)
            return [pair for d in group for pair in self.upscale([d])]
        share = (time.perf_counter() - t0) / len(group)
        for d in group:
            d.seconds["upscale"] = share
        return list(zip(group, outs, strict=True))

    def write(self, decoded: _Decoded, sr: np.ndarray) -> ItemResult:
        """Writer thread: encode with the record and put the output atomically."""
        if self.stop.is_set():
            raise _Cancelled
        item = decoded.item
        t0 = time.perf_counter()
        record = self.engine.identity.record(item.key)
        suffix = PurePosixPath(item.target_key).suffix.lower()
        try:
            with item.target.put(
                item.target_key,
                metadata=record,
                content_type=_CONTENT_TYPES.get(suffix, "application/octet-stream"),
            ) as path:
                write_image(path, sr, text=record)
        except StorageError:
            raise
        except Exception as exc:
            return self._result(
                item, "failed", f"cannot write the output: {_failure_reason(exc)}", decoded.started
            )
        result = self._result(
            item, "done", decoded.reason, decoded.started, **decoded.seconds, write=time.perf_counter() - t0
        )
        result.shape = tuple(int(n) for n in sr.shape)
        result.bit_depth = 16 if sr.dtype == np.uint16 else 8
        return result

    # ------------------------------------------------------------------ the loop

    def _claim(self, item: BatchItem) -> str | None:
        """The key that already makes ``item``'s output in this run, if any (else claim it)."""
        other = self.claimed.setdefault(item.output_uri, item.key)
        return None if other == item.key else other

    def run(self, items: Iterable[BatchItem]) -> Counts:
        start = time.perf_counter()
        group_size = max(1, self.engine.settings.batch)
        depth = 2 * self.readers + group_size
        source: Iterator[BatchItem] = iter(items)
        reads: collections.deque[Future[_Decoded | ItemResult]] = collections.deque()
        writes: set[Future[ItemResult]] = set()
        read_pool = ThreadPoolExecutor(self.readers, thread_name_prefix="difiisr-read")
        write_pool = ThreadPoolExecutor(self.writers, thread_name_prefix="difiisr-write")
        try:
            while True:
                for item in source:  # refill the prefetch window (the listing advances lazily here)
                    reads.append(read_pool.submit(self.prepare, item, self._claim(item)))
                    if len(reads) >= depth:
                        break
                if not reads:
                    break
                ready = [reads.popleft().result()]  # the oldest, waiting for it if needed
                while reads and reads[0].done() and sum(isinstance(r, _Decoded) for r in ready) < group_size:
                    ready.append(reads.popleft().result())
                group = []
                for r in ready:
                    if isinstance(r, ItemResult):
                        self.record(r)
                    else:
                        group.append(r)
                for decoded, out in self.upscale(group) if group else []:
                    if isinstance(out, BaseException):
                        self.record(
                            self._result(decoded.item, "failed", _failure_reason(out), decoded.started)
                        )
                    else:
                        writes.add(write_pool.submit(self.write, decoded, out))
                self._collect(writes, limit=2 * self.writers)
            self._collect(writes, limit=0)
        except BaseException:
            self.stop.set()
            for future in reads:
                future.cancel()
            raise
        finally:
            read_pool.shutdown(wait=True, cancel_futures=True)
            write_pool.shutdown(wait=True, cancel_futures=True)
            self.counts.elapsed_s = time.perf_counter() - start
        return self.counts

    def _collect(self, writes: set[Future[ItemResult]], limit: int) -> None:
        """Record finished writes; wait while more than ``limit`` are pending."""
        while writes:
            finished = {f for f in writes if f.done()}
            if not finished and len(writes) <= limit:
                return
            if not finished:
                finished, _ = wait(writes, return_when=FIRST_COMPLETED)
            for future in finished:
                writes.discard(future)
                self.record(future.result())


def run_items(
    items: Iterable[BatchItem],
    engine: Engine,
    *,
    overwrite: bool = False,
    stale: StalePolicy = "redo",
    report: ReportWriter | None = None,
    progress: bool = True,
    total: int | None = None,
    readers: int = 4,
    writers: int = 2,
    desc: str = "upscale",
    on_result: Callable[[ItemResult], None] | None = None,
) -> Counts:
    """Upscale every item whose output is not already made with ``engine``'s model and settings.

    ``stale="refuse"`` (``difiisr upscale``) checks every output first and raises ``StaleOutputError`` when one
    was made differently and ``overwrite`` is not set (``items`` must then be a sequence); ``"redo"`` (the
    batch job) redoes such outputs. ``overwrite`` redoes everything. Results go to ``report`` (one line each) and
    ``on_result``; the progress bar counts files and shows images/s.
    """
    if stale == "refuse":
        if not isinstance(items, Sequence):
            raise TypeError("stale='refuse' needs the items as a sequence (they are checked before any work)")
        refuse_stale_outputs(items, engine.identity, overwrite=overwrite)
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        pipeline = _Pipeline(
            engine,
            overwrite=overwrite,
            report=report,
            bar=bar,
            readers=readers,
            writers=writers,
            on_result=on_result,
        )
        return pipeline.run(items)


__all__ = ["BatchItem", "Counts", "Engine", "StalePolicy", "refuse_stale_outputs", "run_items"]
