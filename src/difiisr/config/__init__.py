"""Typed configuration: frozen dataclasses built from YAML presets plus ``key=value`` overrides."""

from difiisr.config.loader import (
    ConfigError,
    apply_overrides,
    blame,
    flatten,
    from_mapping,
    load_config,
    load_yaml,
    override_key,
    preset_path,
    to_mapping,
)

__all__ = [
    "ConfigError",
    "apply_overrides",
    "blame",
    "flatten",
    "from_mapping",
    "load_config",
    "load_yaml",
    "override_key",
    "preset_path",
    "to_mapping",
]
