"""The model as an MLflow model: pyfunc wrapper, registration, champion promotion and rollback.

Aliases only (``champion``, ``challenger``, ``previous-champion``); registry stages are never used.
Importing this package does not import MLflow; the functions do.
"""

from difiisr.registry.names import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    ALIAS_PREVIOUS,
    DEFAULT_MODEL_NAME,
    RegistryError,
)

__all__ = ["ALIAS_CHALLENGER", "ALIAS_CHAMPION", "ALIAS_PREVIOUS", "DEFAULT_MODEL_NAME", "RegistryError"]
