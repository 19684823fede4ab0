"""Dataclass configs: presets, dict/YAML/JSON round trips and ``key=value`` overrides.

Configs are plain ``@dataclass`` objects whose defaults come from the paper. Each
config module keeps a ``PRESETS`` dict (name -> config instance) beside it, always
with a ``tiny`` entry for tests. Nothing here knows about any particular config.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from papernotes.errors import ConfigError

C = TypeVar("C")


def preset(presets: dict[str, C], name: str, what: str = "preset") -> C:
    """Return a copy of ``presets[name]``; an unknown name lists the valid ones."""
    if name not in presets:
        raise ConfigError(f"unknown {what} {name!r}; expected one of: {', '.join(sorted(presets))}")
    return dataclasses.replace(presets[name])  # type: ignore[type-var]


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) dataclass config."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a dict, rejecting unknown keys by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of field names to values, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        inner = _dataclass_of(hints.get(key))
        kwargs[key] = (
            from_dict(inner, value, f"{source}.{key}") if inner and isinstance(value, dict) else value
        )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def load_config(cls: type[C], path: str | Path) -> C:
    """Read a YAML or JSON file into ``cls``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {exc}") from exc
    return from_dict(cls, data or {}, str(path))


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
    path = Path(path)
    data = to_dict(cfg)
    text = (
        yaml.safe_dump(data, sort_keys=False)
        if path.suffix in (".yaml", ".yml")
        else json.dumps(data, indent=2)
    )
    path.write_text(text)


def apply_overrides(cfg: C, overrides: list[str]) -> C:
    """Return a copy of ``cfg`` with ``field=value`` (or ``nested.field=value``) overrides applied.

    Values are parsed as YAML scalars (``3``, ``1e-3``, ``true``, ``null``, ``[1, 2]``).
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected the form field=value")
        key, raw = item.split("=", 1)
        cfg = _set_path(cfg, key.strip().split("."), yaml.safe_load(raw), item)
    return cfg


def _set_path(cfg: Any, keys: list[str], value: Any, item: str) -> Any:
    names = {f.name for f in dataclasses.fields(cfg)}
    if keys[0] not in names:
        raise ConfigError(
            f"override {item!r}: {type(cfg).__name__} has no field {keys[0]!r}; known: {sorted(names)}"
        )
    if len(keys) > 1:
        value = _set_path(getattr(cfg, keys[0]), keys[1:], value, item)
    else:
        value = _coerce(value, typing.get_type_hints(type(cfg)).get(keys[0]), item)
    return dataclasses.replace(cfg, **{keys[0]: value})


def _coerce(value: Any, hint: Any, item: str) -> Any:
    """YAML reads ``3e-4`` as a string (YAML 1.1 wants a dot); cast numbers to the field's type."""
    if isinstance(value, str) and hint in (float, int, float | None, int | None):
        target = float if hint in (float, float | None) else int
        try:
            return target(value)
        except ValueError as exc:
            raise ConfigError(f"override {item!r}: expected a number, got {value!r}") from exc
    if isinstance(value, int) and not isinstance(value, bool) and hint in (float, float | None):
        return float(value)
    return value


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass inside ``hint`` (``X`` or ``X | None``), if any."""
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg  # type: ignore[return-value]
    return None
