"""The pipeline's data steps: version the HR frames, validate them, synthesize the LR/HR pairs.

Each function is what one Kubeflow component (``components/``) calls: it runs the library job inside the step's
MLflow child run (``difiisr.lifecycle.lineage``) and returns a typed result for the component's outputs.

An HR dataset for the pipeline is one DVC-tracked folder holding ``train/`` and ``test/`` frames (``SPLITS``).
Training pairs come from ``train/`` with the chosen protocol (the Real-ESRGAN second-order degradation, random
crops, for real-world models; or the bicubic protocol on whole frames, for a model judged on bicubic test pairs
such as the tiny demo), held-out evaluation pairs from ``test/`` with the bicubic test protocol (whole frames),
each in the same sub-folder of the pairs dataset.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from difiisr.errors import DifiisrError, ExitCode
from difiisr.lifecycle.lineage import pipeline_run, step_run
from difiisr.registry.names import (
    LINEAGE_TAG_DATA_BYTES,
    LINEAGE_TAG_DATA_FILES,
    LINEAGE_TAG_DATA_MD5,
    LINEAGE_TAG_DATA_PATH,
    LINEAGE_TAG_DATA_REMOTE,
    LINEAGE_TAG_DATA_REPO,
    LINEAGE_TAG_DATA_REV,
    LINEAGE_TAG_PAIRS_MD5,
)

log = logging.getLogger(__name__)

TRAIN, TEST = "train", "test"
SPLITS = (TRAIN, TEST)
TRAIN_PROTOCOLS = ("realesrgan", "bicubic")
TEST_PROTOCOL = "bicubic"


class DatasetLayoutError(DifiisrError, ValueError):
    """A dataset folder lacks a split the pipeline needs; the message names the folder and the layout."""


class DataRulesBroken(DifiisrError):
    """The data expectation suite failed; the message has its summary, the reports name every file."""

    exit_code = ExitCode.FAILURES


@dataclasses.dataclass(frozen=True)
class VersionedData:
    """The materialised HR dataset and the pipeline run it starts: DVC identity plus the MLflow parent run."""

    parent_run_id: str
    folder: Path
    repo: str
    path: str
    rev: str
    md5: str
    n_files: int
    n_bytes: int
    remote: str

    def tags(self) -> dict[str, str]:
        """The data identity as MLflow tags (``LINEAGE_TAG_DATA_*``)."""
        return {
            LINEAGE_TAG_DATA_MD5: self.md5,
            LINEAGE_TAG_DATA_REPO: self.repo,
            LINEAGE_TAG_DATA_PATH: self.path,
            LINEAGE_TAG_DATA_REV: self.rev,
            LINEAGE_TAG_DATA_REMOTE: self.remote,
            LINEAGE_TAG_DATA_FILES: str(self.n_files),
            LINEAGE_TAG_DATA_BYTES: str(self.n_bytes),
        }

    def metadata(self) -> dict[str, Any]:
        """The data identity as KFP artifact metadata."""
        return {
            "md5": self.md5,
            "repo": self.repo,
            "path": self.path,
            "rev": self.rev,
            "remote": self.remote,
            "n_files": self.n_files,
            "n_bytes": self.n_bytes,
            "mlflow_parent_run_id": self.parent_run_id,
        }


@dataclasses.dataclass(frozen=True)
class ValidationOutcome:
    """Per split: the number of images checked; ``reports`` holds ``SPLIT/report.{json,md,html}``."""

    images: dict[str, int]
    reports: Path


@dataclasses.dataclass(frozen=True)
class PairsOutcome:
    """The pairs dataset: pair counts and content md5 per split (``difiisr.data.fingerprint``)."""

    folder: Path
    pairs: dict[str, int]
    md5: dict[str, str]
    train_protocol: str = TRAIN_PROTOCOLS[0]

    def metadata(self) -> dict[str, Any]:
        """KFP artifact metadata: pairs and md5 per split, and the protocols."""
        return {
            **{f"{split}_pairs": n for split, n in self.pairs.items()},
            **{f"{split}_md5": md5 for split, md5 in self.md5.items()},
            f"{TRAIN}_protocol": self.train_protocol,
            f"{TEST}_protocol": TEST_PROTOCOL,
        }


def require_splits(folder: str | Path, what: str) -> Path:
    """``folder`` after checking it has every split of ``SPLITS``; ``DatasetLayoutError`` names the missing one."""
    root = Path(folder)
    for split in SPLITS:
        if not (root / split).is_dir():
            raise DatasetLayoutError(
                f"{what} {root} has no {split}/ folder; the pipeline's HR dataset is one folder holding "
                f"{' and '.join(s + '/' for s in SPLITS)} frames"
            )
    return root


def version_data(
    *,
    repo: str,
    path: str,
    rev: str,
    dest: str | Path,
    remote: str,
    experiment: str,
    kfp_run_id: str,
    pipeline: str,
) -> VersionedData:
    """Materialise the HR dataset ``path`` at git ``rev`` of ``repo`` into ``dest`` and start the pipeline's lineage.

    ``repo`` empty: the current directory; ``rev`` empty: its working tree (``difiisr.data.versioning.materialize``);
    ``remote`` empty: the repository's default DVC remote. The MLflow parent run of this pipeline run is created here and tagged with
    the data's DVC identity (md5, repo, path, rev), which every later child run inherits.
    """
    from difiisr.data.versioning import materialize

    parent = pipeline_run(experiment, kfp_run_id, pipeline=pipeline)
    target = Path(dest)
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()  # an output folder the orchestrator made empty: materialise writes it whole, atomically
    with step_run(parent, "version_data") as run:
        version = materialize(repo or ".", path, rev or None, target, remote=remote or None)
        require_splits(dest, f"dataset {path!r} at rev {rev or 'working tree'!r} of {repo or '.'!r}:")
        data = VersionedData(
            parent_run_id=parent,
            folder=Path(dest),
            repo=repo,
            path=str(version.path),
            rev=str(version.rev or ""),
            md5=str(version.md5),
            n_files=int(version.n_files),
            n_bytes=int(version.n_bytes),
            remote=str(version.remote or ""),
        )
        pipeline_run(experiment, kfp_run_id, pipeline=pipeline, tags=data.tags())
        run.set_tags(data.tags())
        run.log_metrics({"data.n_files": data.n_files, "data.n_bytes": data.n_bytes}, step=0)
    log.info("dataset %s@%s: md5 %s, %d files -> %s", data.path, data.rev, data.md5, data.n_files, dest)
    return data


def validate_data(
    *, hr_dir: str | Path, report_dir: str | Path, min_side: int, parent_run_id: str
) -> ValidationOutcome:
    """Run the expectation suite over every split of the HR dataset; ``DataRulesBroken`` if a rule breaks.

    ``min_side``: the smallest frame side in pixels (the training crop). The reports go to
    ``report_dir/SPLIT/`` and to the step's MLflow run (``validation/SPLIT/``) whether the suite passes or not.
    """
    from difiisr.data.validation import ValidationConfig, validate_images, write_reports

    root = require_splits(hr_dir, "HR dataset")
    cfg = ValidationConfig(min_side=min_side)
    images: dict[str, int] = {}
    broken: list[str] = []
    with step_run(parent_run_id, "validate_data") as run:
        run.log_params({"min_side": min_side})
        for split in SPLITS:
            result = validate_images(root / split, cfg)
            reports = write_reports(result, Path(report_dir) / split)
            for report in reports:
                run.log_artifact(report, f"validation/{split}")
            images[split] = len(result.table)
            failed = {f"rules_failed.{split}": len(result.failures), f"images.{split}": images[split]}
            run.log_metrics(failed, step=0)
            if not result.success:
                broken.append(f"{split}: {result.summary()}")
        if broken:
            raise DataRulesBroken(
                "the HR dataset breaks the data rules (reports in MLflow run "
                f"{run.run_id} under validation/):\n" + "\n".join(broken)
            )
    return ValidationOutcome(images, Path(report_dir))


def synthesize_degradations(
    *,
    hr_dir: str | Path,
    pairs_dir: str | Path,
    variants: int,
    crop: int,
    seed: int,
    device: str,
    parent_run_id: str,
    train_protocol: str = TRAIN_PROTOCOLS[0],
) -> PairsOutcome:
    """Write ``pairs_dir/train`` and ``pairs_dir/test``.

    Training pairs: ``train_protocol`` ``realesrgan`` makes ``variants`` random ``crop`` crops per frame;
    ``bicubic`` makes one pair per whole frame (``variants`` and ``crop`` do not apply). The test pairs follow the
    bicubic protocol on whole frames. Both are checked with the pairs expectation suite (HR sides at least
    ``crop``). Seeds, settings and the per-pair manifests go to the step's MLflow run.
    """
    from difiisr.data.fingerprint import dataset_md5
    from difiisr.data.pairs import MANIFEST_NAME, SETTINGS_NAME
    from difiisr.data.validation import ValidationConfig, validate_pairs
    from difiisr.degradation.pairs import degrade_folder

    if train_protocol not in TRAIN_PROTOCOLS:
        raise DatasetLayoutError(
            f"train_protocol={train_protocol!r}: use one of {', '.join(TRAIN_PROTOCOLS)}"
        )
    hr, out = require_splits(hr_dir, "HR dataset"), Path(pairs_dir)
    train_job = (
        {"protocol": train_protocol, "variants": variants, "crop": crop}
        if train_protocol == "realesrgan"
        else {"protocol": train_protocol, "variants": 1, "crop": None}
    )
    jobs = {
        TRAIN: train_job,
        TEST: {"protocol": TEST_PROTOCOL, "variants": 1, "crop": None},
    }
    pairs: dict[str, int] = {}
    md5: dict[str, str] = {}
    with step_run(parent_run_id, "synthesize_degradations") as run:
        run.log_params(
            {"seed": seed, "device": device, **{f"{s}.{k}": v for s, j in jobs.items() for k, v in j.items()}}
        )
        for split, job in jobs.items():
            summary = degrade_folder(hr / split, out / split, seed=seed, device=device, progress=False, **job)
            check = validate_pairs(out / split, ValidationConfig(min_side=crop))
            if not check.success:
                raise DataRulesBroken(
                    f"{out / split}: the pairs break the pairs contract:\n{check.summary()}"
                )
            pairs[split], md5[split] = summary.total, dataset_md5(out / split)
            for name in (SETTINGS_NAME, MANIFEST_NAME):
                run.log_artifact(out / split / name, f"pairs/{split}")
            log.info(summary.line())
        run.log_metrics({f"pairs.{s}": n for s, n in pairs.items()}, step=0)
        run.set_tags({LINEAGE_TAG_PAIRS_MD5.format(split=s): v for s, v in md5.items()})
    return PairsOutcome(out, pairs, md5, train_protocol)
