"""``difiisr version-data``: track data folders with DVC and push them to a local or S3 remote."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``difiisr version-data``."""
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="data folders inside the workspace")
    parser.add_argument(
        "--workspace", required=True, help="DVC workspace (made a DVC project if it is not one)"
    )
    parser.add_argument("--remote", required=True, help="remote: a folder, or s3://BUCKET/PREFIX")
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3 endpoint for S3-compatible stores (default $AWS_ENDPOINT_URL); credentials come from AWS_*",
    )


def run(args: argparse.Namespace) -> int:
    """Init, add, push; print one line per folder with its DVC md5."""
    from difiisr.data.versioning import DataVersionError, init_workspace, track

    try:
        init_workspace(
            args.workspace, args.remote, endpoint_url=args.endpoint_url if "://" in args.remote else None
        )
        versions = track(args.workspace, args.folders)
    except DataVersionError as exc:
        print(f"difiisr version-data: {exc}")
        return 1
    for v in versions:
        print(f"versioned {v.path}: md5 {v.md5}, {v.nfiles} files, {v.size} bytes -> {args.remote}")
    return 0
