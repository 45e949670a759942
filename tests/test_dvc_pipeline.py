"""dvc.yaml: DVC itself parses the DAG, every stage's command is a valid `difiisr` invocation, `dvc repro` runs
the stages on a micro configuration with `dvc metrics show` printing the evaluation, and `dvc status` reports
the stages a preset or code edit affects."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from difiisr.cli.main import VERBS

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).with_name("dvc"))


def _interpolate(cmd: str, params: dict) -> str:
    def value(match: re.Match) -> str:
        node = params
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", value, cmd)


def test_dvc_parses_the_dag():
    dvc = str(Path(sys.executable).with_name("dvc"))
    out = subprocess.run([dvc, "dag", "--dot"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert stages == {
        "synth_train", "synth_test", "validate_hr", "degrade_train", "degrade_test", "validate_pairs", "train",
        "evaluate",
    }  # fmt: skip
    for stage in stages:
        assert stage in out.stdout
    assert '"train" -> "evaluate"' in out.stdout


def test_every_stage_command_parses_with_its_verb():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in stages.items():
        argv = shlex.split(_interpolate(stage["cmd"], params))
        assert argv[0] == "difiisr" and argv[1] in VERBS, name
        parser = argparse.ArgumentParser(prog=f"difiisr {argv[1]}", exit_on_error=False)
        importlib.import_module(VERBS[argv[1]][0]).add_arguments(parser)
        parser.parse_args(argv[2:])  # raises on an unknown flag or a bad value


# ------------------------------------------------------------------ dvc repro on a micro configuration

MICRO_PARAMS = {
    "data": {"size": "64x64", "bit_depth": 8, "n_train": 2, "n_test": 1, "seed_train": 0, "seed_test": 1000},
    "degrade": {
        "train_protocol": "realesrgan",
        "variants": 1,
        "crop": 64,
        "seed": 1,
        "test_protocol": "bicubic",
    },
    "train": {
        "config": "src/difiisr/presets/train_tiny.yaml",
        "max_steps": 2,
        "batch_size": 2,
        "mlflow": False,
    },
    "evaluate": {"sampler": "onestep", "seed": 0},
}


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _changed_stages(repo: Path, env: dict[str, str]) -> set[str]:
    """Stage names `dvc status` reports as changed."""
    status = json.loads(_run([DVC, "status", "--json"], repo, env))
    return {key.split(":")[-1] for key in status}


@pytest.fixture(scope="module")
def micro_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A git copy of this checkout (tracked and new files) with micro params.yaml, after `dvc repro`."""
    repo = tmp_path_factory.mktemp("repo")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for rel in filter(None, listed.split("\0")):
        if (ROOT / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, repo / rel)
    (repo / "params.yaml").write_text(yaml.safe_dump(MICRO_PARAMS, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(repo / "src"),  # the stages' `difiisr` runs this copy's code
        "OMP_NUM_THREADS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path_factory.mktemp("dvc-site-cache")),
        "DVC_NO_ANALYTICS": "1",
    }
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        _run(["git", *args], repo, env)
    _run([DVC, "repro"], repo, env, timeout=1500)
    return repo, env


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_and_metrics_show_prints_the_evaluation(micro_repo) -> None:
    repo, env = micro_repo
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    stages = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert set(lock) == stages
    assert (repo / "outputs" / "train" / "model").is_dir()
    metrics = json.loads((repo / "reports" / "eval" / "metrics.json").read_text())
    assert metrics["eval/n_images"] == 1.0 and {
        "eval/psnr_y",
        "eval/bicubic_psnr_y",
        "eval/delta_psnr_y",
    } <= set(metrics)
    shown = _run([DVC, "metrics", "show"], repo, env)
    assert "reports/eval/metrics.json" in shown and "eval/delta_psnr_y" in shown
    assert f"{metrics['eval/bicubic_psnr_y']:.5f}"[:6] in shown  # the number itself (DVC rounds to 5 digits)
    as_json = json.loads(_run([DVC, "metrics", "show", "--json"], repo, env))
    assert as_json[""]["data"]["reports/eval/metrics.json"]["data"] == metrics
    assert _changed_stages(repo, env) == set()  # everything up to date after the run


@pytest.mark.slow
def test_dvc_status_reports_the_stages_a_code_or_preset_edit_affects(micro_repo) -> None:
    repo, env = micro_repo
    preset = repo / "src" / "difiisr" / "presets" / "train_tiny.yaml"
    blur = repo / "src" / "difiisr" / "degradation" / "blur.py"
    original = {p: p.read_text() for p in (preset, blur)}
    try:
        preset.write_text(original[preset].replace("lr: 2.0e-4", "lr: 3.0e-4"))
        assert preset.read_text() != original[preset]
        assert _changed_stages(repo, env) == {"train"}
        preset.write_text(original[preset])
        blur.write_text(original[blur] + "\n# an edit of the degradation code\n")
        assert _changed_stages(repo, env) == {"degrade_train", "degrade_test", "train"}
    finally:
        for path, text in original.items():
            path.write_text(text)
    assert _changed_stages(repo, env) == set()
