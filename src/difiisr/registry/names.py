"""Names shared by registration and promotion: aliases, version tag keys, errors."""

from __future__ import annotations

DEFAULT_MODEL_NAME = "difiisr-x4"

ALIAS_CHAMPION = "champion"
ALIAS_CHALLENGER = "challenger"
ALIAS_PREVIOUS = "previous-champion"

# Model-version tags written by `register` (inputs to promotion decisions).
TAG_DATASET_MD5 = "dataset_md5"
TAG_EVAL_MD5 = "eval_md5"
TAG_CONFIG_HASH = "config_hash"
TAG_CODE_VERSION = "code_version"
TAG_PRESET = "preset"
METRIC_TAG_PREFIX = "metric."  # metric.psnr_y = model value; metric.bicubic_psnr_y = bicubic baseline

# Model-version tags written by `promote` / `rollback` (the decision log).
TAG_DECISION = "promotion.decision"  # promoted | rejected | refused | superseded
TAG_REASON = "promotion.reason"
TAG_DECIDED_AT = "promotion.decided_at"
TAG_ROLLED_BACK = "promotion.rolled_back"


class RegistryError(RuntimeError):
    """A registry operation cannot proceed; the message says which model/version/run and why."""


# ---------------------------------------------------------------------------------------------------------------
# Pipeline lineage (difiisr.lifecycle, components/, pipelines/): one parent run per pipeline run, one child run
# per step. Run tags, plus the model-version tags that point a version back to its pipeline run and data.
# ---------------------------------------------------------------------------------------------------------------
LINEAGE_TAG_ROLE = "difiisr.role"  # "pipeline" on a parent run, "step" on a child run
LINEAGE_TAG_PIPELINE = "difiisr.pipeline"  # the pipeline's name, e.g. difiisr-train-eval
LINEAGE_TAG_STEP = "difiisr.step"  # the step of a child run, e.g. train, batch_upscale.shard-0
LINEAGE_TAG_KFP_RUN_ID = "kfp.run_id"  # the Kubeflow Pipelines run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER)
LINEAGE_TAG_KFP_STATE = "kfp.final_state"  # the pipeline's final state, set by the exit handler
LINEAGE_TAG_KFP_ERROR = "kfp.error"
LINEAGE_TAG_CODE_VERSION = "code_version"  # same key as the training run's tag
# The DVC identity of the pipeline's input data (HR frames): on the parent run, every child run and the model
# version, so `dvc get REPO PATH --rev REV` (or difiisr.data.versioning.materialize) fetches the exact data back.
LINEAGE_DATA_TAG_PREFIX = "data."  # every LINEAGE_TAG_DATA_* starts with it; child runs inherit these tags
LINEAGE_TAG_DATA_MD5 = "data.md5"
LINEAGE_TAG_DATA_REPO = "data.repo"
LINEAGE_TAG_DATA_PATH = "data.path"
LINEAGE_TAG_DATA_REV = "data.rev"
LINEAGE_TAG_DATA_REMOTE = "data.remote"
LINEAGE_TAG_DATA_FILES = "data.n_files"
LINEAGE_TAG_DATA_BYTES = "data.n_bytes"
# Model-version tags written by the pipeline's register step (besides register_run's own).
LINEAGE_TAG_PIPELINE_RUN = (
    "pipeline.run_id"  # the MLflow parent run of the pipeline run that made the version
)
# Child-run tags and metrics of the pipeline steps (read back by the local run's summary).
LINEAGE_TAG_PAIRS_MD5 = "pairs.{split}.md5"  # synthesize_degradations: content md5 of pairs/SPLIT
LINEAGE_TAG_MODEL_NAME = "model.name"  # register: the registered model ...
LINEAGE_TAG_MODEL_VERSION = "model.version"  # ... its new version ...
LINEAGE_TAG_MODEL_RUN = "model.run_id"  # ... and the training run it came from
LINEAGE_TAG_PROMOTION_OUTCOME = "promotion.outcome"  # promote: promoted | rejected | refused | unchanged
LINEAGE_TAG_PROMOTION_REASON = "promotion.reason"
LINEAGE_TAG_PROMOTION_CHAMPION = "promotion.champion"  # the champion version after the gate
LINEAGE_TAG_BATCH_MODEL = "batch.model_uri"  # batch: the pinned models:/NAME/VERSION every shard used
LINEAGE_TAG_BATCH_REPORT = "batch.report_uri"
LINEAGE_TAG_BATCH_EXIT = "batch.exit_code"
LINEAGE_METRIC_BATCH = "batch.{status}"  # batch: inputs done | skipped | failed
