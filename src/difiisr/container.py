"""The project's container image reference: the one place where the image name and tag are computed.

``make image`` tags the build with it (through ``infra/docker/image_tag.py``), pipeline components use it as
their ``base_image``, and ``tests/infra`` check that the Kubernetes manifests name the same image.

The reference is ``{registry}/difiisr:{version}-{variant}``, e.g. ``ghcr.io/difiisr/difiisr:0.1.0-cuda``:
the registry comes from ``DIFIISR_IMAGE_REGISTRY`` (default :data:`DEFAULT_REGISTRY`), the version from the
installed package, the variant is ``cuda`` (CUDA 13.0 runtime, the default) or ``cpu``.
``DIFIISR_IMAGE`` set to a full reference overrides all of that (for either variant), e.g. to pin a digest.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Literal

from difiisr import __version__
from difiisr.errors import DifiisrError

Variant = Literal["cuda", "cpu"]

VARIANTS: tuple[str, ...] = ("cuda", "cpu")
DEFAULT_REGISTRY = "ghcr.io/difiisr"
IMAGE_NAME = "difiisr"
REGISTRY_ENV = "DIFIISR_IMAGE_REGISTRY"
IMAGE_ENV = "DIFIISR_IMAGE"

# A docker tag: at most 128 characters from [A-Za-z0-9_.-], not starting with '.' or '-'.
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ImageRefError(DifiisrError, ValueError):
    """An image variant, registry or override that cannot form a valid image reference."""


def image_tag(variant: Variant | str = "cuda", version: str = __version__) -> str:
    """The image tag ``{version}-{variant}``; characters a docker tag forbids (e.g. ``+``) become ``-``."""
    if variant not in VARIANTS:
        raise ImageRefError(f"unknown image variant {variant!r}: use one of {', '.join(VARIANTS)}")
    tag = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{version}-{variant}")
    if not _TAG_RE.match(tag):
        raise ImageRefError(f"package version {version!r} does not give a valid docker tag ({tag!r})")
    return tag


def image_ref(variant: Variant | str = "cuda", *, environ: Mapping[str, str] | None = None) -> str:
    """The full image reference for ``variant`` (``cuda`` or ``cpu``), e.g. ``ghcr.io/difiisr/difiisr:0.1.0-cuda``.

    ``environ`` defaults to ``os.environ``; ``DIFIISR_IMAGE`` (full override) and ``DIFIISR_IMAGE_REGISTRY``
    are read from it.
    """
    env = os.environ if environ is None else environ
    tag = image_tag(variant)  # validates the variant even when the override wins
    override = env.get(IMAGE_ENV, "").strip()
    if override:
        repository = _repository_part(override)
        if not repository or repository != repository.lower() or any(ch.isspace() for ch in override):
            raise ImageRefError(
                f"{IMAGE_ENV}={override!r} is not an image reference: use lower-case "
                "REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:DIGEST without spaces"
            )
        return override
    registry = env.get(REGISTRY_ENV, "").strip().rstrip("/") or DEFAULT_REGISTRY
    parts = registry.split("/")
    if (
        registry != registry.lower()
        or any(ch.isspace() or ch == "@" for ch in registry)
        or any(":" in part or not part for part in parts[1:])
    ):
        raise ImageRefError(
            f"{REGISTRY_ENV}={registry!r} is not a registry path: use lower-case HOST[:PORT][/NAMESPACE], "
            f"e.g. {DEFAULT_REGISTRY}"
        )
    return f"{registry}/{IMAGE_NAME}:{tag}"


def _repository_part(reference: str) -> str:
    """The repository of an image reference: everything before ``:TAG`` or ``@DIGEST``."""
    if "@" in reference:
        return reference.split("@", 1)[0]
    head, _, last = reference.rpartition("/")
    name = last.split(":", 1)[0]
    return f"{head}/{name}" if head else name
