"""The one config system: dataclasses, optional YAML file, dotted `key=value` overrides, strict validation.

Unknown keys and values of the wrong type are UserErrors naming the key; the resolved config is written into the
run folder so a run can be resumed and a model reloaded exactly.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

WORDS = {"yes": True, "on": True, "true": True, "no": False, "off": False, "false": False}


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true / false. yes, no, on and off stay words, so a string setting takes
    them (conditional=yes); a boolean setting still reads them as true or false."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def read_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp, key: str):
    """Check/convert `value` to the annotated type `tp`, or raise a UserError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as e:
                errors.append(e)
        raise errors[0] if errors else UserError(f"config key '{key}': bad value {value!r}")
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool) and inner is not str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key '{key}' expects a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in WORDS:
            return WORDS[value.lower()]
        raise UserError(f"config key '{key}' expects true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, str):
        value = _number(value)  # YAML 1.1 reads '1e-4' as a string
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"config key '{key}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # NaN passes every `< 0` check, and then trains something else
                raise UserError(f"config key '{key}' expects a finite number, got {value!r}")
            return float(value)
        raise UserError(f"config key '{key}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"config key '{key}' expects a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"config key '{key}' is a section; set its fields as {key}.NAME=VALUE")
        return from_dict(tp, value, prefix=key + ".")
    raise UserError(f"config key '{key}': unsupported type {_type_name(tp)}")


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a (possibly partial) nested dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        from .methods import METHODS  # here only: the methods' module reads its configs through this one

        key = unknown[0]
        other = f"; {key}.* are the settings of --method {key}" if not prefix and key in METHODS else ""
        raise UserError(f"unknown config key '{prefix}{key}' (known in this section: {', '.join(names)}{other})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    return obj


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.lr=1e-4' -> (['train', 'lr'], 0.0001); values are read as YAML scalars/lists."""
    if "=" not in item:
        raise UserError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set has an empty key in {item!r}")
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_nested(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"config key '{'.'.join(path)}': '{part}' is a value, not a section")
        node = child
    node[path[-1]] = value


def load_file(path: str | None) -> dict:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path} is a folder, not a file" if p.is_dir() else f"config file not found: {path}")
    try:
        data = read_yaml(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid YAML/JSON: {str(e).splitlines()[0]}")
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values")
    return data


def resolve(cls, file: str | None = None, overrides: list[str] | None = None, base: dict | None = None):
    """defaults <- base <- file <- --set overrides, validated into `cls`."""
    tree: dict = json.loads(json.dumps(base or {}))
    for path, value in _flatten(load_file(file)):
        _set_nested(tree, path, value)
    for item in overrides or []:
        path, value = parse_override(item)
        _set_nested(tree, path, value)
    return from_dict(cls, tree)


def _flatten(tree: dict, prefix: list[str] | None = None):
    for k, v in tree.items():
        path = (prefix or []) + str(k).split(".")  # a file may write train.iters as a dotted key, as --set does
        if isinstance(v, dict):
            yield from _flatten(v, path)
        else:
            yield path, v


def describe_fields(cls, prefix: str = "", defaults=None) -> list[tuple[str, str, str]]:
    """(key, type, default) rows for --help listings, recursing into sections."""
    rows = []
    obj = defaults if defaults is not None else cls()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe_fields(type(value), prefix + f.name + ".", value)
        else:
            rows.append((prefix + f.name, _type_name(hints[f.name]), json.dumps(value)))
    return rows
