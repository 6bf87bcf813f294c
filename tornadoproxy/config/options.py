"""Declaring configuration options and building frozen dataclasses from parsed YAML.

Generic: `option()` declares a field with its default, help text, value check and reloadability
(`restart_only()` lists what a reload cannot apply); `build()` checks a
mapping against a dataclass's declarations and fails with a `ConfigError` naming the key path;
`describe()` lists every option for the docs. A list of records (`tuple[SomeConfig, ...]`) is built
record by record; a record class may define `record_problem()` to check its fields together, and a
check may name a sub-path (`("[2].name", "...")`). `Secret` options hold their value masked.
What the options are is `config`'s concern.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any, Literal

from tornadoproxy.redact import Secret


class ConfigError(Exception):
    """A configuration problem; the message starts with the key path."""


# What is wrong with a value, or None; a tuple (sub-path, problem) names an element of a list value.
Problem = str | tuple[str, str] | None
Check = Callable[[Any], Problem]


def option(
    default: Any, help: str, check: Check | None = None, secret: bool = False, reload: bool = True
) -> Any:
    """Declare one option: its default, its help text (the docs), an optional value check, and
    whether a reload (SIGHUP) applies it (`reload=False`: its component is built once at start-up, so
    a change waits for a restart). A `secret` option's value is never echoed in a ConfigError (proxy
    URLs carry passwords)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples or default factories for mutable defaults")
    metadata = {"help": help, "check": check, "secret": secret, "reload": reload}
    if isinstance(default, types.MappingProxyType):  # read-only, but unhashable: dataclasses want a factory
        return field(default_factory=lambda: default, metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help, "check": None})


def build(cls: type, data: Any, path: str) -> Any:
    """Turn a mapping into the frozen dataclass `cls`, checking keys, types and values."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or '(top level)'}: must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{_join(path, str(key))}: unknown key (known here: {known})")
    values = {}
    for name, spec in fields.items():
        if name not in data:
            continue
        key_path = _join(path, name)
        value = _convert(hints[name], data[name], key_path)
        check = spec.metadata.get("check")
        problem = check(value) if check is not None else None
        if isinstance(problem, tuple):
            suffix, message = problem
            raise ConfigError(f"{key_path}{suffix}: {message}")
        if problem:
            secret = spec.metadata.get("secret") or hints[name] is Secret
            shown = "" if secret else f", got {_show(data[name])}"
            raise ConfigError(f"{key_path}: {problem}{shown}")
        values[name] = value
    built = cls(**values)
    record_problem = getattr(built, "record_problem", None)
    found = record_problem() if record_problem is not None else None
    if found is not None:
        key, message = found
        raise ConfigError(f"{_join(path, key) if key else path}: {message}")
    return built


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(typing.get_args(hint), value, path)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and str(value) in choices:
            return str(value)  # YAML reads an unquoted 1.1 or 2 as a number
        if value not in choices:
            raise ConfigError(f"{path}: must be one of {', '.join(map(str, choices))}, got {_show(value)}")
        return value
    if origin is tuple:
        return _convert_tuple(typing.get_args(hint)[0], value, path)
    if origin in (dict, Mapping, collections.abc.Mapping):
        return _convert_mapping(typing.get_args(hint)[1], value, path)
    return _convert_scalar(hint, value, path)


def _convert_union(choices: tuple[Any, ...], value: Any, path: str) -> Any:
    if value is None and type(None) in choices:
        return None
    errors = []
    for choice in choices:
        if choice is type(None):
            continue
        try:
            return _convert(choice, value, path)
        except ConfigError as exc:
            if _shape_of(choice) == _shape_of(type(value)):
                raise  # the value has this choice's shape: its own error says the most
            errors.append(str(exc))
    if len(errors) > 1:
        kinds = " or ".join(_describe_shape(choice) for choice in choices if choice is not type(None))
        raise ConfigError(f"{path}: must be {kinds}, got {_show(value)}")
    raise ConfigError(errors[-1] if errors else f"{path}: unexpected value")


def _shape_of(hint: Any) -> str:
    origin = typing.get_origin(hint) or hint
    if origin in (tuple, list):
        return "list"
    if origin in (dict, Mapping) or (isinstance(origin, type) and dataclasses.is_dataclass(origin)):
        return "mapping"
    return "scalar"


def _describe_shape(hint: Any) -> str:
    shape = _shape_of(hint)
    if shape == "scalar":
        return {str: "a string", bool: "true or false", int: "an integer", float: "a number"}.get(
            hint, "one value"
        )
    return "a list" if shape == "list" else "a mapping"


def _convert_tuple(item: Any, value: Any, path: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{path}: must be a list, got {_show(value)}")
    return tuple(_convert(item, element, f"{path}[{index}]") for index, element in enumerate(value))


def _convert_mapping(item: Any, value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: must be a mapping, got {_show(value)}")
    converted = {}
    for key, element in value.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{path}: keys must be non-empty strings, got {_show(key)}")
        converted[key] = _convert(item, element, _join(path, key))
    return types.MappingProxyType(converted)


def _convert_scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: must be true or false, got {_show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: must be an integer, got {_show(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: must be a number, got {_show(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: must be a string, got {_show(value)}")
    if hint is Secret:
        if isinstance(value, str):
            return Secret(value)
        raise ConfigError(f"{path}: must be a string")  # the value is never echoed
    raise TypeError(f"unsupported option type {hint!r} at {path}")


def _join(path: str, key: str) -> str:
    # A key that is not a plain name (empty, spaces, punctuation) is quoted so the path stays readable.
    shown = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else repr(key)
    return f"{path}.{shown}" if path else shown


def _show(value: Any) -> str:
    """A short description of a bad value; strings are not echoed in full (they may be secrets)."""
    if isinstance(value, str):
        return "a string" if len(value) > 40 or "@" in value else repr(value)
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return "a " + type(value).__name__


def describe(cls: type, path: str = "") -> list[tuple[str, Any, str]]:
    """Every option as (key path, default, help): the source of the docs and of their tests.
    A list of records is one option here (default: empty); `describe_records` lists its fields."""
    rows: list[tuple[str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for spec in dataclasses.fields(cls):
        key_path = _join(path, spec.name)
        if dataclasses.is_dataclass(hints[spec.name]):
            rows.extend(describe(hints[spec.name], key_path))
        else:
            rows.append((key_path, getattr(defaults, spec.name), spec.metadata["help"]))
    return rows


def restart_only(cls: type, path: str = "") -> list[str]:
    """The key path of every option declared `reload=False`, in declaration order."""
    found: list[str] = []
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        key_path = _join(path, spec.name)
        if dataclasses.is_dataclass(hints[spec.name]):
            found.extend(restart_only(hints[spec.name], key_path))
        elif not spec.metadata.get("reload", True):
            found.append(key_path)
    return found


def record_type(hint: Any) -> type | None:
    """The record class of a `tuple[Record, ...]` option, or None for any other option."""
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            return item
    return None


def describe_records(cls: type, path: str = "") -> list[tuple[str, Any, str]]:
    """The fields of every list of records as (`list[].field`, default, help), for the docs."""
    rows: list[tuple[str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        key_path = _join(path, spec.name)
        hint = hints[spec.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            rows.extend(describe_records(hint, key_path))
        elif (record := record_type(hint)) is not None:
            rows.extend((f"{key_path}[].{field}", d, h) for field, d, h in describe(record))
    return rows
