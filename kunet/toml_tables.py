"""TOML tables into dataclasses: type checks, unknown keys and ``section.key=value`` overrides.

Generic over the dataclasses of :mod:`kunet.config`: a field of another dataclass type is a nested table,
``T | None`` accepts a missing value, and a field whose metadata says ``internal`` cannot be set from a file.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path
from typing import Any, get_type_hints

from kunet.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib


def is_internal(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("internal"))


def _optional_of(target_type: Any) -> Any:
    """``T`` for a field typed ``T | None``, else None."""
    arguments = getattr(target_type, "__args__", ())
    if isinstance(target_type, types.UnionType) and len(arguments) == 2 and type(None) in arguments:
        return next(argument for argument in arguments if argument is not type(None))
    return None


def _coerce(value: Any, target_type: Any, where: str) -> Any:
    """Checks and converts one TOML value to the dataclass field type."""
    origin = getattr(target_type, "__origin__", None)
    optional = _optional_of(target_type)
    if optional is not None:
        return None if value is None else _coerce(value, optional, where)
    if target_type is bool:
        if isinstance(value, bool):
            return value
    elif target_type is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif target_type is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif target_type is str:
        if isinstance(value, str):
            return value
    elif origin is list:
        (item_type,) = target_type.__args__
        if isinstance(value, list):
            return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    else:  # pragma: no cover - every field type is covered above
        return value
    type_name = getattr(target_type, "__name__", str(target_type))
    raise ConfigError(f"{where}: expected {type_name}, got {value!r}")


def dataclass_from_table(cls, data: dict, where: str):
    """``cls`` built from a TOML table: unknown keys and wrong types are errors naming the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not is_internal(f)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            where_key = f"{where}: unknown key" if where else "unknown key"
            raise ConfigError(f"{where_key} {key!r} (known: {', '.join(sorted(fields))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = dataclass_from_table(hint, value, f"{where}.{key}" if where else key)
        else:
            kwargs[key] = _coerce(value, hint, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _parse_override_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare words are strings: --set train.optimizer=adam


def apply_overrides(data: dict, overrides: list[str], where: str = "override") -> dict:
    """Applies ``section.key=value`` strings (TOML values; bare words are strings) to a raw TOML dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where} {item!r}: expected section.key=value")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where} {item!r}: {key!r} is not a section")
        node[keys[-1]] = _parse_override_value(text.strip())
    return data


def read_toml(path: Path) -> dict:
    """The TOML file as a dict; a folder, a missing, unreadable, binary or malformed file is named."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give the pipeline's .toml file (e.g. pipelines/isbi2012.toml)")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipeline file not found") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the pipeline file ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; a pipeline is a TOML text file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
