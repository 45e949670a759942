"""The training metrics log: per-step loss terms, windowed records in ``OUT_DIR/metrics.jsonl``, and the tracker.

One JSON object per logged step: ``{"step", "loss", <other loss terms>, "lr", "grad_norm", "samples_per_s", ...}``;
each loss term is the mean over the steps of the log window. Per-step terms stay on the device until a record is
written, so logging costs one host synchronisation per record, not per step. On resume the file is cut back to the
resumed step first (``truncate_metrics``): steps trained after the last checkpoint of a killed run are trained and
logged again, once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from difiisr.registry import names
from difiisr.storage import atomic_write_text
from difiisr.training.tracking import NullTracker

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: str | Path, step: int) -> int:
    """Keep only the records of ``path`` with ``step <= step`` (atomic rewrite); returns how many were dropped.

    Lines that are not a JSON record with an integer ``step`` (a line cut short by a kill) are dropped too.
    A missing file is left missing.
    """
    file = Path(path)
    if not file.is_file():
        return 0
    lines = file.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        atomic_write_text(file, "".join(f"{line}\n" for line in kept))
        log.info("%s: dropped %d record(s) after step %d (they are trained again)", file, dropped, step)
    return dropped


class MetricsLog:
    """Collects the global mean loss terms of every step and writes one record per log window.

    ``path``: the ``metrics.jsonl`` to append to, or None on processes that write nothing. ``global_batch``:
    samples per step (for ``samples_per_s``).
    """

    def __init__(self, path: Path | None, tracker: NullTracker, global_batch: int) -> None:
        self.path = path
        self.tracker = tracker
        self.global_batch = global_batch
        self.steps: list[dict[str, float]] = []
        self._pending: list[dict[str, torch.Tensor]] = []
        self._window_steps = 0
        self._window_start = time.perf_counter()

    def add_step(self, terms: Mapping[str, torch.Tensor]) -> None:
        """Record one step's loss terms (0-dim tensors, any device; ``"loss"`` among them)."""
        self._pending.append(dict(terms))
        self._window_steps += 1

    def flush(self) -> None:
        """Move pending per-step terms to the host (one synchronisation)."""
        if not self._pending:
            return
        keys = list(self._pending[0])
        values = torch.stack([torch.stack([t[n].float() for n in keys]) for t in self._pending]).cpu()
        self.steps.extend(dict(zip(keys, row.tolist(), strict=True)) for row in values)
        self._pending.clear()

    @property
    def losses(self) -> list[float]:
        """The ``loss`` of every flushed step, in order."""
        return [terms[names.METRIC_LOSS] for terms in self.steps]

    def write(self, step: int, extra: Mapping[str, float]) -> dict[str, Any]:
        """The record of the window ending at ``step`` (term means, then ``extra`` and ``samples_per_s``).

        Appends it to ``path`` and logs it to the tracker (when this process writes), then starts a new window.
        """
        self.flush()
        window = self.steps[-self._window_steps :] if self._window_steps else []
        record: dict[str, Any] = {"step": step}
        for name in window[0] if window else ():
            record[name] = float(sum(terms[name] for terms in window) / len(window))
        record.update(extra)
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        record[names.METRIC_SAMPLES_PER_S] = self._window_steps * self.global_batch / elapsed
        if self.path is not None:
            self.tracker.log_metrics({k: v for k, v in record.items() if k != "step"}, step)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        self._window_start, self._window_steps = time.perf_counter(), 0
        return record
