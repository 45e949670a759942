"""dvc.yaml: DVC itself parses the DAG, and every stage's command is a valid `difiisr` invocation."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from difiisr.cli.main import VERBS

ROOT = Path(__file__).resolve().parents[1]


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
