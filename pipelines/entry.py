"""The command line both pipelines share: run locally (default), ``--compile FILE.yaml``, ``--host URL`` (submit),
and for the batch pipeline ``--schedule CRON --host URL`` (a recurring run).

Parameters: ``--param KEY=VALUE`` (repeatable; VALUE is read as YAML, so ``5``, ``0.1``, ``true`` and
``{sampler: onestep}`` have their types) overrides the pipeline's defaults, or the local run's embedded ones.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from difiisr.errors import ExitCode, UsageError, exit_codes_help

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("outputs/demo")
KFP_EXPERIMENT = "difiisr"


def build_parser(description: str, *, schedule: bool = False) -> argparse.ArgumentParser:
    """Arguments common to both pipelines (plus ``--schedule`` for the batch pipeline)."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog=exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--compile", metavar="FILE.yaml", type=Path, help="write the pipeline package and stop")
    mode.add_argument(
        "--host", metavar="URL", help="submit to the Kubeflow Pipelines API at URL (kfp.Client)"
    )
    parser.add_argument(
        "--experiment", default=KFP_EXPERIMENT, help=f"KFP experiment for --host (default {KFP_EXPERIMENT})"
    )
    parser.add_argument(
        "--service-account",
        default=None,
        help="with --host: the Kubernetes service account of the run's pods (multi-node training needs one "
        "allowed to create TrainJobs, e.g. difiisr-pipeline from infra/k8s); default: KFP's",
    )
    parser.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pipeline parameter (repeatable; VALUE is YAML, e.g. training_steps=50 or inference={seed: 1})",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help=f"local run: folder for data, MLflow store, work and outputs (default {DEFAULT_ROOT})",
    )
    if schedule:
        parser.add_argument(
            "--schedule",
            metavar="CRON",
            help='with --host: create a recurring run on this 6-field cron (seconds first), e.g. "0 0 2 * * *"',
        )
        parser.add_argument(
            "--name", default=None, help="with --schedule: the recurring run's name (default: the pipeline's)"
        )
    return parser


def parse_params(items: Sequence[str], pipeline: Any) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> arguments, keys checked against the pipeline's inputs."""
    known = set(pipeline.component_spec.inputs or {})
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {item!r}: expected KEY=VALUE, e.g. training_steps=50")
        if key not in known:
            raise UsageError(
                f"--param {key}: not a parameter of {pipeline.name}; known: {', '.join(sorted(known))}"
            )
        out[key] = yaml.safe_load(value) if value else ""
    return out


def check_cron(expression: str) -> str:
    """``expression`` if it is a 6-field cron (seconds minutes hours day-of-month month day-of-week)."""
    fields = expression.split()
    if len(fields) != 6 or not all(re.fullmatch(r"[0-9*?/,\-A-Za-z#L]+", f) for f in fields):
        raise UsageError(
            f"--schedule {expression!r}: KFP recurring runs take a 6-field cron with seconds first, "
            'e.g. "0 0 2 * * *" for 02:00 every day'
        )
    return expression


def compile_package(pipeline: Any, path: Path) -> Path:
    """Write the pipeline package (IR YAML) to ``path``."""
    from kfp import compiler

    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(path))
    return path


def submit(
    pipeline: Any,
    host: str,
    experiment: str,
    arguments: Mapping[str, Any],
    *,
    service_account: str | None = None,
    client_factory: Callable[[str], Any] | None = None,
) -> str:
    """Submit one run to the KFP API at ``host``; returns its run id."""
    client = _client(host, client_factory)
    result = client.create_run_from_pipeline_func(
        pipeline, arguments=dict(arguments), experiment_name=experiment, service_account=service_account
    )
    return str(result.run_id)


def schedule(
    pipeline: Any,
    host: str,
    experiment: str,
    cron: str,
    arguments: Mapping[str, Any],
    *,
    name: str | None = None,
    service_account: str | None = None,
    client_factory: Callable[[str], Any] | None = None,
) -> str:
    """Create a recurring run of ``pipeline`` on ``cron`` (6 fields): at most one at a time, no catch-up."""
    client = _client(host, client_factory)
    exp = client.create_experiment(name=experiment)  # returns the existing experiment of that name
    with tempfile.TemporaryDirectory(prefix="difiisr-kfp-") as tmp:
        package = compile_package(pipeline, Path(tmp) / "pipeline.yaml")
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=name or pipeline.name,
            cron_expression=check_cron(cron),
            max_concurrency=1,
            no_catchup=True,
            params=dict(arguments),
            pipeline_package_path=str(package),
            service_account=service_account,
        )
    return str(job.recurring_run_id)


def _client(host: str, factory: Callable[[str], Any] | None) -> Any:
    if factory is not None:
        return factory(host)
    import kfp

    return kfp.Client(host=host)


def run_local(pipeline: Any, arguments: Mapping[str, Any], pipeline_root: Path) -> float:
    """Run the whole DAG here with ``kfp.local.SubprocessRunner`` (this Python environment); returns the start
    time (epoch seconds). Raises ``RuntimeError`` naming the failed task when a step fails."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    started = time.time()
    with warnings.catch_warnings():
        # The project image name does not contain "python", which the local runner warns about for every step;
        # locally, every step runs in this environment anyway. Cluster-only settings are ignored locally too.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*no effect.*local.*")
        pipeline(**arguments)
    return started


def main(
    argv: Sequence[str] | None,
    *,
    pipeline: Any,
    description: str,
    local_arguments: Callable[[Any, Mapping[str, Any]], dict[str, Any]],
    schedulable: bool = False,
) -> int:
    """The command line of ``pipeline``: local run (default), ``--compile``, ``--host`` (and ``--schedule``).

    ``local_arguments(setup, params)`` turns the local layout (``difiisr.lifecycle.local``) and ``--param``
    values into the local run's arguments. Returns the exit code (``ExitCode.USAGE`` on a usage error).
    """
    args = build_parser(description, schedule=schedulable).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args, pipeline, local_arguments)
    except UsageError as exc:
        print(f"{Path(sys.argv[0]).name}: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)


def _dispatch(args: argparse.Namespace, pipeline: Any, local_arguments: Callable[..., dict[str, Any]]) -> int:
    params = parse_params(args.params, pipeline)
    cron = getattr(args, "schedule", None)
    if cron and not args.host:
        raise UsageError("--schedule needs --host URL (the Kubeflow Pipelines API to create it on)")
    if args.compile:
        print(f"wrote {compile_package(pipeline, args.compile)}")
    elif args.host and cron:
        job = schedule(
            pipeline,
            args.host,
            args.experiment,
            cron,
            params,
            name=args.name,
            service_account=args.service_account,
        )
        print(f"created recurring run {job} ({cron!r}, max concurrency 1, no catch-up) on {args.host}")
    elif args.host:
        run_id = submit(pipeline, args.host, args.experiment, params, service_account=args.service_account)
        print(f"submitted {pipeline.name} run {run_id} to {args.host} (experiment {args.experiment})")
    else:
        from pipelines import summary

        return summary.run_and_report(pipeline, pipeline.name, args.root, params, local_arguments)
    return int(ExitCode.OK)
