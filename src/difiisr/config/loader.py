"""Build frozen dataclasses from nested mappings (YAML), strictly: unknown or ill-typed keys are errors.

Every error names the source (file) and the dotted key, and says what would be accepted. YAML files are read
strictly too: an empty file and a key given twice in one mapping are errors (PyYAML alone would give no settings,
or silently keep the last value). ``load_config`` builds a dataclass from a file plus ``KEY=VALUE`` overrides and
blames the file or the override that set a bad key, separately.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from difiisr.errors import DifiisrError

T = TypeVar("T")


class ConfigError(DifiisrError, ValueError):
    """A configuration file or override is wrong; the message names the source, key and fix.

    ``key``: the dotted key at fault (with the ``source`` prefix given to ``from_mapping``), when one is known.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def preset_path(name: str) -> Path:
    """Path of a YAML preset shipped in ``difiisr/presets`` (``name`` without ``.yaml``)."""
    root = resources.files("difiisr") / "presets"
    path = Path(str(root / f"{name}.yaml"))
    if not path.is_file():
        known = sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))
        raise ConfigError(f"unknown preset {name!r}; shipped presets: {', '.join(known)}")
    return path


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; errors name the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_unique_keys(node, p, "")
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError(
            f"{p}: the config file is empty (no keys, only blank lines or comments); write its settings into it, "
            "or point to the intended file"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _check_unique_keys(node: yaml.Node, path: Path, prefix: str) -> None:
    """Refuse a scalar key given twice in one mapping, naming the file, the dotted key and both lines."""
    if isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            name = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            line = key_node.start_mark.line + 1
            identity = (key_node.tag, key_node.value)
            if identity in first_line:
                raise ConfigError(
                    f"{path}: line {line}: key {name!r} is given twice (first on line {first_line[identity]}); "
                    "YAML would silently keep the last value: delete one of them",
                    key=name,
                )
            first_line[identity] = line
            _check_unique_keys(value_node, path, name)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_unique_keys(item, path, f"{prefix}[{index}]")


def _parse_scalar(text: str) -> Any:
    """Parse an override value with YAML rules (``3`` -> int, ``[1,2]`` -> list, ``true`` -> bool); a quoted value
    (``'0123'``, ``"1e-4"``) stays a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    quoted = text.strip()[:1] in ("'", '"')
    if (
        isinstance(value, str) and not quoted
    ):  # YAML 1.1 reads 1e-4 as a string; a number is what the user meant
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def apply_overrides(
    data: Mapping[str, Any], overrides: Sequence[str], source: str = "--set"
) -> dict[str, Any]:
    """Return a deep copy of ``data`` with ``a.b.c=value`` overrides applied (values parsed as YAML)."""
    out = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source} {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{source} {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = _parse_scalar(value)
    return out


def _deepcopy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_deepcopy(v) for v in data]
    return data


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors: list[ConfigError] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"{where}: invalid value {value!r}", key=where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}", key=where)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}", key=where)
        return from_mapping(tp, value, where)
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}", key=where)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}", key=where)
            return tuple(
                _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        item_tp = args[0] if args else Any
        return tuple(_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}", key=where)
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}", key=where)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}", key=where)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}", key=where)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}", key=where)
        return value
    if tp is Path:
        return Path(value)
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any], source: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ``ConfigError``.

    ``source`` is a file name or dotted prefix used in messages.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    where = f"{source}: " if source else ""
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ConfigError(
            f"{where}unknown key(s) {', '.join(map(str, unknown))} for {cls.__name__}; "
            f"accepted keys: {', '.join(sorted(fields))}",
            key=_dotted(source, str(unknown[0])),
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], _dotted(source, name))
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if exc.key is None:
            exc.key = source
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}{exc}", key=source) from None


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def override_key(item: str) -> str:
    """The dotted key of a ``KEY=VALUE`` override (``optim.lr`` for ``optim.lr=1e-4``)."""
    return item.split("=", 1)[0].strip()


def blame(
    exc: ConfigError, path: str | Path | None, overrides: Sequence[str], flag: str = "--set"
) -> ConfigError:
    """``exc`` reworded to name the override that set its key (``--set optim.lr=x``), else the file.

    The override wins when its key is the error's key or a section above it (the last such override applies);
    for an error about a whole section, the overrides inside that section are named.
    """
    key = exc.key or ""
    keys = [(item, override_key(item)) for item in overrides]
    own = [item for item, k in keys if key and (k == key or key.startswith(k + "."))]
    inside = [item for item, k in keys if key and k.startswith(key + ".")]
    items = own[-1:] or inside
    over = f" (applied to {path})" if path is not None else ""
    if items:
        named = ", ".join(f"{flag} {item}" for item in items)
        return ConfigError(f"{named}{over}: {exc}", key=exc.key)
    if path is None:
        return exc
    return ConfigError(f"{path}: {exc}", key=exc.key)


def load_config(
    cls: type[T], path: str | Path | None, overrides: Sequence[str] = (), flag: str = "--set"
) -> T:
    """Build dataclass ``cls`` from YAML file ``path`` (None: the defaults) plus ``KEY=VALUE`` overrides.

    Errors name the file or the override at fault separately from the key (``blame``).
    """
    data = load_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides, flag)
    try:
        return from_mapping(cls, data, "")
    except ConfigError as exc:
        raise blame(exc, path, overrides, flag) from None


def to_mapping(obj: Any) -> Any:
    """Plain-YAML form of a (nested) dataclass: tuples become lists, paths strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_mapping(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a nested mapping to dotted keys (for MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out
