"""``difiisr batch-upscale``: x4 super-resolve every image under a folder or S3 prefix into another one.

Idempotent and resumable: an output whose record (PNG text / TIFF description, and the S3 object metadata) has
the same model weights digest and inference settings is skipped; anything else is redone. Outputs are written
atomically, so a killed run leaves no partial object and the next run continues where it stopped.
``--shard i/N`` takes a stable 1/N of the keys (by key hash) for N parallel pods. The run report (one JSON line
per input, and a summary) goes to ``OUTPUT/_reports/``. S3 endpoint and credentials come from ``AWS_*``, models
from ``MLFLOW_TRACKING_URI``. Exit code 0: all done or skipped; 1: some inputs failed (see the report); 4: the
job itself failed (storage, model).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``batch-upscale`` flags to ``parser``."""
    from difiisr.inference.settings import InferenceSettings

    parser.add_argument(
        "--model",
        required=True,
        metavar="URI|DIR",
        help="MLflow model URI (models:/difiisr-x4@champion, models:/NAME/VERSION, runs:/ID/model_folder) or a "
        "model folder; an alias is pinned to its version, which every output records",
    )
    parser.add_argument(
        "--input",
        required=True,
        metavar="URI",
        help="s3://BUCKET/PREFIX or a local folder (read recursively)",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="URI",
        help="s3://BUCKET/PREFIX or a local folder; must neither contain nor lie inside --input",
    )
    parser.add_argument(
        "--glob",
        default="*",
        help="fnmatch pattern on the key relative to --input ('*' also crosses '/'); only .png/.tif/.tiff/.jpg/"
        ".jpeg keys are inputs (default '*')",
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="i/N",
        help="take shard i of N (0 <= i < N, by key hash): one per pod",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N (default auto)"
    )
    InferenceSettings.add_arguments(parser)
    parser.add_argument(
        "--report", default=None, metavar="URI", help="where the run report goes (default OUTPUT/_reports/)"
    )
    parser.add_argument(
        "--readers", type=int, default=4, metavar="N", help="download + decode threads (default 4)"
    )
    parser.add_argument(
        "--writers", type=int, default=2, metavar="N", help="encode + upload threads (default 2)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the batch job; the exit code says whether every input succeeded (0) or some failed (1)."""
    from difiisr.errors import UsageError
    from difiisr.inference.batch import BatchJob, run_batch
    from difiisr.inference.settings import InferenceSettings
    from difiisr.storage.selection import Shard

    if args.readers < 1 or args.writers < 1:
        raise UsageError("--readers and --writers must be >= 1")
    shard = Shard.parse(args.shard)
    job = BatchJob(
        model=args.model,
        input_uri=args.input,
        output_uri=args.output,
        glob=args.glob,
        shard=(shard.index, shard.count),
        settings=InferenceSettings.from_args(args),
        device=args.device,
        progress=not args.no_progress,
        report_uri=args.report,
        readers=args.readers,
        writers=args.writers,
    )
    summary = run_batch(job)
    print(f"batch-upscale: {summary.describe()}")
    if summary.failed:
        print(
            f"difiisr batch-upscale: {summary.failed} input(s) failed; reasons in {summary.report_uri}",
            file=sys.stderr,
        )
    return int(summary.exit_code)
