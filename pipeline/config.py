"""One config mechanism for every stage.

YAML file -> `yaml.safe_load` -> `key=value` overrides from the command line ->
a keyword-only dataclass. Unknown keys and wrong types are collected and raised
once, in a single `ConfigError` that names every bad key.

Config classes are plain dataclasses; each field's help text lives in
`field(metadata={"help": ...})` so `describe()` can list them. Types this
module understands: bool, int, float, str, `list[str]`, `X | None`, and unions
such as `int | str` (tried in order; used for `workers: auto`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pipeline.errors import ConfigError

T = TypeVar("T")


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn `["lr=3e-4", "compile=false"]` into `{"lr": 3e-4, "compile": False}`.

    Values are parsed as YAML scalars or flow lists, so `true`, `4`, `[python, go]`
    and `null` mean what they mean in the config file. No config key takes a
    mapping, so text that YAML would read as one (`prompt=def main():`) or
    cannot read at all stays the string that was typed.
    """
    out: dict[str, Any] = {}
    bad: list[str] = []
    for arg in args:
        key, sep, raw = arg.partition("=")
        if not sep or not key:
            bad.append(arg)
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict):
            value = raw
        out[key.strip()] = value
    if bad:
        raise ConfigError(f"expected key=value, got: {' '.join(bad)}")
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found; pass --config with an existing file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "syntax error"
        raise ConfigError(f"{p}: not valid YAML ({first}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of key: value at the top level")
    return data


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, converted) for `value` against the annotation `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, conv = _coerce(value, arg)
            if ok:
                return True, conv
        return False, value
    if tp is type(None):
        return value is None, None
    if tp is Any:
        return True, value
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):  # `languages=python` on the command line
            value = [value]
        if not isinstance(value, list):
            return False, value
        items = [_coerce(v, item_tp) for v in value]
        if all(ok for ok, _ in items):
            return True, [v for _, v in items]
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        # YAML turns `2024` or `1e-3` into numbers; a str field takes them as written.
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return True, str(value)
        return False, value
    return isinstance(value, tp), value


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "") if not isinstance(tp, type) else tp.__name__


def build(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Make `cls(**values)`, checking every key and type first and failing once."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    problems: list[str] = []
    unknown = sorted(set(values) - set(fields))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name not in fields:
            continue
        ok, conv = _coerce(value, hints[name])
        if not ok:
            problems.append(f"{name}={value!r} is not {_type_name(hints[name])}")
        else:
            kwargs[name] = conv
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except TypeError as e:  # a required key left out
        raise ConfigError(f"{source}: {e}") from None


def load(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + command-line overrides -> a checked `cls` instance."""
    values = read_yaml(path) if path is not None else {}
    values.update(parse_overrides(overrides or []))
    return build(cls, values, source=str(path) if path is not None else "config")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (for manifests, run folders, hashing)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def describe(cls: type) -> str:
    """One line per key: name, default and help text (for `--help`)."""
    lines = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        lines.append(f"  {f.name:<18} {default:<22} {f.metadata.get('help', '')}")
    return "\n".join(lines)
