"""Print the project image reference (``REGISTRY/difiisr:VERSION-VARIANT``) for ``docker build -t``.

Runs with any Python 3.11, with or without the package installed: it imports ``difiisr.container`` from
this checkout's ``src/``, the one place where the reference is computed. Honours ``DIFIISR_IMAGE_REGISTRY``
and ``DIFIISR_IMAGE`` (see ``difiisr.container``).

    python infra/docker/image_tag.py [--variant cuda|cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def main(argv: list[str] | None = None) -> int:
    """Print the image reference for the chosen variant; exit 2 with a message on a bad variant or env."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variant", default="cuda", choices=("cuda", "cpu"), help="image variant (default cuda)"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(SRC))
    from difiisr.container import ImageRefError, image_ref

    try:
        print(image_ref(args.variant))
    except ImageRefError as exc:
        print(f"image_tag.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
