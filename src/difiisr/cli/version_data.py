"""``difiisr version-data``: version data folders with DVC (add, push to a local or S3 remote, git commit)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``difiisr version-data``."""
    parser.add_argument("folders", nargs="+", metavar="FOLDER", help="data folders inside the workspace")
    parser.add_argument(
        "--workspace",
        required=True,
        help="git + DVC workspace (made one if it is not; its commits pin the data)",
    )
    parser.add_argument("--remote", required=True, help="remote: a folder, or s3://BUCKET/PREFIX")
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help="S3 endpoint for S3-compatible stores (default $AWS_ENDPOINT_URL; kept out of committed config); "
        "credentials come from AWS_*",
    )
    parser.add_argument(
        "--message", default=None, help="git commit message (default: 'data: version FOLDER...')"
    )


def run(args: argparse.Namespace) -> int:
    """Add, push and commit; print one line per folder with its git rev and DVC md5."""
    from difiisr.data.versioning import DataVersionError, track
    from difiisr.errors import ExitCode

    try:
        versions = track(
            args.workspace, args.folders, args.remote, endpoint_url=args.endpoint_url, message=args.message
        )
    except DataVersionError as exc:
        print(f"difiisr version-data: {exc}")
        return int(exc.exit_code)
    for v in versions:
        print(
            f"versioned {v.path} at rev {v.rev}: md5 {v.md5}, {v.n_files} files, {v.n_bytes} bytes -> {v.remote}"
        )
    return int(ExitCode.OK)
