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
