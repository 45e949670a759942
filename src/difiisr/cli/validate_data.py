"""``difiisr validate-data DIR [--pairs]``: run the data expectation suite; a broken rule is a failure exit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive(text: str) -> int:
    """argparse type for an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: DIR [--pairs] [--min-side N] [--sf 4] [--report-dir D] [--no-progress]."""
    parser.add_argument(
        "dir", type=Path, help="folder of images, or a pairs folder (hr/ and lr/) with --pairs"
    )
    parser.add_argument("--pairs", action="store_true", help="DIR holds hr/NAME and lr/NAME pairs")
    parser.add_argument(
        "--min-side", type=_positive, default=256, help="smallest allowed min(width, height) (default 256)"
    )
    parser.add_argument("--sf", type=_positive, default=4, help="scale factor HR/LR for --pairs (default 4)")
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="where report.json/.md/.html go; never inside DIR (default: reports/validate-data/PATH under the "
        "current directory, PATH = DIR relative to it, or DIR's absolute path without the leading /)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Validate, write report.json/.md/.html, print the summary with the reasons; returns an ``ExitCode``.

    OK when every rule holds, FAILURES when a rule is broken, USAGE when DIR is not a folder (of pairs) or the
    report folder would be inside DIR (nothing is written then).
    """
    from difiisr.data.validation import (
        ValidationConfig,
        report_dir_for,
        validate_images,
        validate_pairs,
        write_reports,
    )
    from difiisr.errors import DifiisrError, ExitCode

    cfg = ValidationConfig(min_side=args.min_side, sf=args.sf)
    validate = validate_pairs if args.pairs else validate_images
    try:
        report_dir = report_dir_for(args.dir, args.report_dir)
        result = validate(args.dir, cfg, progress=not args.no_progress)
        reports = write_reports(result, report_dir)
    except DifiisrError as exc:
        print(f"validate-data: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except NotADirectoryError as exc:
        print(f"validate-data: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    print(result.summary())
    print(f"reports: {', '.join(str(p) for p in reports)}")
    return int(ExitCode.OK if result.success else ExitCode.FAILURES)
