"""Every MLflow name difiisr writes or reads: experiments, run tags, metric keys, artifact paths, registry aliases
and model-version tags. Producers (training, evaluation, registration, promotion, pipelines) and consumers import
them from here; no other module spells one of these strings. Importing this module imports nothing else.
"""

from __future__ import annotations

from difiisr.errors import DifiisrError, ExitCode

# ---------------------------------------------------------------------------------------------------- registry
DEFAULT_MODEL_NAME = "difiisr-x4"
DEFAULT_EXPERIMENT = "difiisr-train"

ALIAS_CHAMPION = "champion"
ALIAS_CHALLENGER = "challenger"
ALIAS_PREVIOUS = "previous-champion"

# ---------------------------------------------------------------------------------------------------- run tags
# Written on a training run (and read by `register` to trace a model version back to its data and code).
RUN_TAG_DATASET_MD5 = "dataset.md5"
RUN_TAG_DATASET_NAME = "dataset.name"
RUN_TAG_DATASET_MODE = "dataset.mode"
RUN_TAG_VALIDATION_MD5 = "validation.md5"
RUN_TAG_CODE_VERSION = "code_version"
RUN_TAG_PRESET = "preset"
RUN_TAG_NUM_PROCESSES = "num_processes"
# Written by `evaluate` on the run it logs to.
RUN_TAG_EVAL_MD5 = "eval_md5"
RUN_TAG_EVAL_NAME = "eval_name"
RUN_TAG_EVAL_N_IMAGES = "eval_n_images"
RUN_TAG_EVAL_NOT_COMPUTED_PREFIX = "eval_not_computed."

# ---------------------------------------------------------------------------------------------------- metrics
# Training metrics, logged every `log_every` steps and at each validation.
METRIC_LOSS = "loss"
# the terms of "loss" when the training config's losses: section is on (difiisr.training.losses)
METRIC_LOSS_DIFFUSION = "loss_diffusion"
METRIC_LOSS_SPECTRAL = "loss_spectral"
METRIC_LOSS_PERCEPTUAL = "loss_perceptual"
METRIC_LR = "lr"
METRIC_GRAD_NORM = "grad_norm"
METRIC_SAMPLES_PER_S = "samples_per_s"
METRIC_PEAK_MEM_GIB = "peak_mem_gib"
METRIC_VAL_PSNR_Y = "val_psnr_y"
METRIC_VAL_PSNR_Y_BICUBIC = "val_psnr_y_bicubic"
METRIC_VAL_PSNR_Y_GAIN = "val_psnr_y_gain"
# Evaluation metrics: eval/<metric> (the model), eval/bicubic_<metric>, eval/delta_<metric>, eval/n_images.
EVAL_METRIC_PREFIX = "eval/"
EVAL_BICUBIC_PREFIX = "bicubic_"
EVAL_DELTA_PREFIX = "delta_"


def eval_metric_key(metric: str, *, method: str = "model") -> str:
    """MLflow key of an evaluation figure: ``eval/psnr_y`` (model), ``eval/bicubic_psnr_y``, ``eval/delta_psnr_y``."""
    prefix = {"model": "", "bicubic": EVAL_BICUBIC_PREFIX, "delta": EVAL_DELTA_PREFIX}[method]
    return f"{EVAL_METRIC_PREFIX}{prefix}{metric}"


# ---------------------------------------------------------------------------------------------------- artifacts
ARTIFACT_MODEL_FOLDER = (
    "model_folder"  # the exported model folder on the training run (what `register` reads)
)
ARTIFACT_EVALUATION = "evaluation"  # per_image.csv, aggregate.json, report.html of `evaluate`
ARTIFACT_VALIDATION = "validation"  # sample grids of training validation
ARTIFACT_PYFUNC_MODEL = "model"  # the logged pyfunc model (what the registry versions point at)
PYFUNC_ARTIFACT_KEY = "model_dir"  # the model folder inside the pyfunc model's artifacts

# ---------------------------------------------------------------------------------------------------- versions
# Model-version tags written by `register` (inputs to promotion decisions).
TAG_DATASET_MD5 = "dataset_md5"
TAG_EVAL_MD5 = "eval_md5"
TAG_CONFIG_HASH = "config_hash"
TAG_CODE_VERSION = "code_version"
TAG_PRESET = "preset"
TAG_RUN_ID = "run_id"
METRIC_TAG_PREFIX = "metric."  # metric.psnr_y = model value; metric.bicubic_psnr_y = bicubic baseline

# Model-version tags written by `promote` / `rollback` (the decision log).
TAG_DECISION = "promotion.decision"  # promoted | rejected | refused | superseded | rolled-back
TAG_REASON = "promotion.reason"
TAG_DECIDED_AT = "promotion.decided_at"
TAG_ROLLED_BACK = "promotion.rolled_back"
TAG_REPLACED = "promotion.replaced"


class RegistryError(DifiisrError, RuntimeError):
    """A registry operation cannot proceed; the message says which model/version/run and why."""

    exit_code = ExitCode.JOB_FAILED


# ---------------------------------------------------------------------------------------------------- pipelines
# Names used by the Kubeflow components and pipelines (parent/child runs, KFP run ids).
# One MLflow parent run per pipeline run, one child run per step (difiisr.lifecycle.lineage); run tags, and the
# model-version tags that point a version back to its pipeline run and its data.
LINEAGE_TAG_ROLE = "difiisr.role"  # "pipeline" on a parent run, "step" on a child run
LINEAGE_TAG_PIPELINE = "difiisr.pipeline"  # the pipeline's name, e.g. difiisr-train-eval
LINEAGE_TAG_STEP = "difiisr.step"  # the step of a child run, e.g. train, batch_upscale.shard-0
LINEAGE_TAG_KFP_RUN_ID = "kfp.run_id"  # the Kubeflow Pipelines run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER)
LINEAGE_TAG_KFP_STATE = "kfp.final_state"  # the pipeline's final state, set by the exit handler
LINEAGE_TAG_KFP_ERROR = "kfp.error"
# The DVC identity of the pipeline's input data (the HR frames): on the parent run, every child run and the model
# version, so difiisr.data.versioning.materialize (or `dvc get REPO PATH --rev REV`) fetches the exact data back.
LINEAGE_DATA_TAG_PREFIX = "data."  # every LINEAGE_TAG_DATA_* starts with it; child runs inherit these tags
LINEAGE_TAG_DATA_MD5 = "data.md5"
LINEAGE_TAG_DATA_REPO = "data.repo"
LINEAGE_TAG_DATA_PATH = "data.path"
LINEAGE_TAG_DATA_REV = "data.rev"
LINEAGE_TAG_DATA_REMOTE = "data.remote"
LINEAGE_TAG_DATA_FILES = "data.n_files"
LINEAGE_TAG_DATA_BYTES = "data.n_bytes"
# On a model version: the MLflow parent run of the pipeline run that made it.
LINEAGE_TAG_PIPELINE_RUN = "pipeline.run_id"
# Child-run tags and metrics of the steps (read back by the local run's summary). The promote step's run also
# carries TAG_DECISION and TAG_REASON, as the version does.
LINEAGE_TAG_PAIRS_MD5 = "pairs.{split}.md5"  # synthesize_degradations: content md5 of pairs/SPLIT
LINEAGE_TAG_MODEL_NAME = "model.name"  # register: the registered model ...
LINEAGE_TAG_MODEL_VERSION = "model.version"  # ... its new version ...
LINEAGE_TAG_MODEL_RUN = "model.run_id"  # ... and the training run it came from
LINEAGE_TAG_PROMOTION_CHAMPION = "promotion.champion"  # promote: the champion version after the gate
LINEAGE_TAG_BATCH_MODEL = "batch.model_uri"  # batch: the pinned models:/NAME/VERSION every shard used
LINEAGE_TAG_BATCH_REPORT = "batch.report_uri"
LINEAGE_TAG_BATCH_EXIT = "batch.exit_code"
LINEAGE_METRIC_BATCH = "batch.{status}"  # batch: inputs done | skipped | failed
