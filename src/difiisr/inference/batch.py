"""Batch upscaling over a local folder or an S3 prefix: the one job behind ``difiisr batch-upscale``, the Kubeflow
``batch_upscale`` component and the CronJob.

``run_batch(BatchJob(model, input_uri, output_uri, ...))``:

1. parses both locations (``s3://bucket/prefix`` or a folder) and refuses an output that overlaps the input;
2. checks that both can be reached (a missing bucket or refused credentials stop here, naming the fix);
3. resolves the model once (``registry.resolve``: a model folder or ``models:/NAME@ALIAS``, pinned to its
   version) and checks the settings against it;
4. lists the input lazily (recursive; image extensions; ``glob`` on the relative key; ``shard`` i/N by key hash)
   and runs ``batch_pipeline.run_items`` with the "redo" policy: an output whose record has the same model
   digest and settings digest is skipped, any other is redone;
5. writes the run report next to the outputs (``OUTPUT/_reports/RUN.jsonl`` + ``RUN.summary.json``, or under
   ``report_uri``).

Output keys mirror the input keys, with ``.tif`` for TIFF inputs and ``.png`` for all others. It returns a
``BatchSummary`` whose ``exit_code`` is ``OK`` or ``FAILURES`` (some inputs failed, each named in the report);
errors found before any work raise ``DifiisrError`` (``USAGE`` for bad references, ``JOB_FAILED`` for storage),
and a storage failure during the run raises ``StorageError`` (``JOB_FAILED``) after the report is written.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

from difiisr import __version__
from difiisr.errors import ExitCode
from difiisr.inference.batch_pipeline import BatchItem, Counts, Engine, run_items
from difiisr.inference.batch_report import ReportWriter, run_id, utc_now
from difiisr.inference.settings import InferenceSettings
from difiisr.io import IMAGE_EXTENSIONS
from difiisr.storage.s3 import S3Client
from difiisr.storage.selection import Selection, Shard
from difiisr.storage.store import Store, open_store
from difiisr.storage.uri import check_separate, parse_location

log = logging.getLogger(__name__)

#: Folder (below the output location) of the run reports.
REPORT_FOLDER = "_reports"


def output_key(key: str) -> str:
    """The output key of input ``key``: same folder and stem, ``.tif`` for TIFF inputs, ``.png`` otherwise."""
    path = PurePosixPath(key)
    suffix = ".tif" if path.suffix.lower() in (".tif", ".tiff") else ".png"
    return str(path.with_suffix(suffix))


@dataclasses.dataclass(frozen=True)
class BatchJob:
    """One batch run. ``model``: model folder or MLflow URI; ``input_uri``/``output_uri``: folder or
    ``s3://bucket/prefix``; ``glob``: fnmatch on the key relative to the input (``*`` crosses ``/``);
    ``shard``: ``(i, N)`` to take only the keys of shard i of N; ``readers``/``writers``: prefetch and upload
    threads; ``report_uri``: where the report goes (default ``OUTPUT/_reports/``)."""

    model: str
    input_uri: str
    output_uri: str
    glob: str = "*"
    shard: tuple[int, int] | None = None
    settings: InferenceSettings = InferenceSettings()
    device: str = "auto"
    progress: bool = True
    report_uri: str | None = None
    readers: int = 4
    writers: int = 2


@dataclasses.dataclass(frozen=True)
class BatchSummary:
    """What a batch run did. ``report_uri``: the JSONL report; ``summary_uri``: the summary JSON next to it."""

    exit_code: ExitCode
    done: int
    skipped: int
    failed: int
    ignored: int
    elapsed_s: float
    input_uri: str
    output_uri: str
    shard: str
    model: str
    model_version: str | None
    model_digest: str
    settings: InferenceSettings
    report_uri: str | None = None
    summary_uri: str | None = None
    started: str = ""
    finished: str = ""

    @property
    def total(self) -> int:
        """Inputs of this shard that were seen (done + skipped + failed)."""
        return self.done + self.skipped + self.failed

    @property
    def images_per_s(self) -> float:
        """Upscaled images per second of wall time (0 when nothing was done)."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the summary file's content)."""
        return {
            "exit_code": int(self.exit_code),
            "exit_meaning": self.exit_code.meaning,
            "counts": {
                "done": self.done,
                "skipped": self.skipped,
                "failed": self.failed,
                "total": self.total,
                "ignored": self.ignored,
            },
            "input": self.input_uri,
            "output": self.output_uri,
            "shard": self.shard,
            "model": {"uri": self.model, "version": self.model_version, "digest": self.model_digest},
            "settings": self.settings.to_params(),
            "settings_digest": self.settings.digest(),
            "elapsed_s": round(self.elapsed_s, 3),
            "images_per_s": round(self.images_per_s, 4),
            "report": self.report_uri,
            "summary": self.summary_uri,
            "started": self.started,
            "finished": self.finished,
            "host": socket.gethostname(),
            "difiisr_version": __version__,
        }

    def describe(self) -> str:
        """One line for a CLI's closing summary."""
        return (
            f"{self.done} done, {self.skipped} skipped, {self.failed} failed of {self.total} input(s) "
            f"(shard {self.shard}; {self.ignored} other key(s) ignored) -> {self.output_uri} in "
            f"{self.elapsed_s:.1f} s ({self.images_per_s:.2f} img/s); model {self.model}"
            + (f" ({self.model_version})" if self.model_version else "")
            + f"; report {self.report_uri}"
        )


def load_engine(model: str, settings: InferenceSettings, device: str, workdir: str) -> Engine:
    """Resolve ``model`` (folder or MLflow URI, pinned to its version), load it on ``device``, check settings."""
    from difiisr.inference.upscaler import Upscaler
    from difiisr.registry.resolve import resolve_model

    resolved = resolve_model(model, workdir)
    upscaler = Upscaler.from_folder(resolved.require_folder(), device=device)
    return Engine.create(upscaler, resolved.uri or str(model), settings, resolved.version)


class _Listing:
    """The items of a run, produced lazily from the input listing; counts keys of this shard not taken."""

    def __init__(self, source: Store, target: Store, selection: Selection) -> None:
        self.source, self.target, self.selection = source, target, selection
        self.ignored = 0

    def __iter__(self) -> Iterator[BatchItem]:
        for key in self.source.list_keys():
            if not self.selection.shard.holds(key):
                continue
            if not self.selection.matches(key):
                self.ignored += 1
                continue
            yield BatchItem(key, self.source, key, self.target, output_key(key))


def run_batch(job: BatchJob) -> BatchSummary:
    """Run ``job`` (see the module docstring); the summary's ``exit_code`` is ``OK`` or ``FAILURES``."""
    shard = Shard.parse(job.shard)
    source_loc, target_loc = parse_location(job.input_uri), parse_location(job.output_uri)
    report_loc = parse_location(job.report_uri) if job.report_uri else None
    check_separate(target_loc, [source_loc])
    if report_loc is not None:
        check_separate(report_loc, [source_loc], flag="--report")
    report_loc = report_loc or parse_location(target_loc.child_uri(REPORT_FOLDER + "/"))
    client = S3Client() if any(loc.is_s3 for loc in (source_loc, target_loc, report_loc)) else None
    source, target, reports = (open_store(loc, client) for loc in (source_loc, target_loc, report_loc))
    stores = (source, target, reports)
    try:
        source.check(write=False)
        target.check(write=True)
        with tempfile.TemporaryDirectory(prefix="difiisr-model-") as workdir:
            engine = load_engine(job.model, job.settings, job.device, workdir)
        target.tidy_all()
        listing = _Listing(source, target, Selection(job.glob, IMAGE_EXTENSIONS, shard))
        return _execute(job, engine, listing, reports, str(shard))
    finally:
        for store in stores:
            store.close()


def _execute(job: BatchJob, engine: Engine, listing: _Listing, reports: Store, shard: str) -> BatchSummary:
    started, t0 = utc_now(), time.perf_counter()
    report = ReportWriter(reports, run_id(shard), engine.report_fields())
    counts = Counts()

    def summary() -> BatchSummary:
        return BatchSummary(
            exit_code=ExitCode.FAILURES if counts.failed else ExitCode.OK,
            done=counts.done,
            skipped=counts.skipped,
            failed=counts.failed,
            ignored=listing.ignored,
            elapsed_s=time.perf_counter() - t0,
            input_uri=listing.source.location.uri,
            output_uri=listing.target.location.uri,
            shard=shard,
            model=engine.identity.model,
            model_version=engine.identity.model_version,
            model_digest=engine.identity.model_digest,
            settings=engine.settings,
            report_uri=report.lines_uri,
            summary_uri=report.summary_uri,
            started=started,
            finished=utc_now(),
        )

    try:
        run_items(
            listing,
            engine,
            stale="redo",
            report=report,
            progress=job.progress,
            readers=job.readers,
            writers=job.writers,
            desc="batch-upscale",
            on_result=lambda r: _tally(counts, r.status),
        )
    except BaseException as exc:
        partial = summary()
        doc = {**partial.to_dict(), "exit_code": int(ExitCode.JOB_FAILED), "error": str(exc)}
        doc["exit_meaning"] = ExitCode.JOB_FAILED.meaning
        try:
            report.finish(doc)
            log.error("the job stopped (%s); report of what was done: %s", exc, report.lines_uri)
        except Exception as report_exc:  # noqa: BLE001 - the original failure is what the caller must see
            report.discard()
            log.error("could not write the report either: %s", report_exc)
        raise
    result = summary()
    report.finish(result.to_dict())
    return result


def _tally(counts: Counts, status: str) -> None:
    setattr(counts, status, getattr(counts, status) + 1)


__all__ = ["REPORT_FOLDER", "BatchJob", "BatchSummary", "load_engine", "output_key", "run_batch"]
