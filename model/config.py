"""One config mechanism for every stage.

YAML file -> `yaml.safe_load` -> `key=value` overrides from the command line ->
a keyword-only dataclass that derives from `Config`. Unknown keys, wrong
types, out-of-range values and failed cross-checks are collected and raised
once, in a single `ConfigError` that names every bad key.

Each field is declared with `option()`: its default, its help text (listed by
`--keys`), optional bounds (`ge`, `gt`, `le`, `lt`) and the tags of what it
`affects`. A tag names one thing that depends on the key:

    "output"  the bytes a data stage writes (a change is refused on a rerun)
    "model"   the network's shape (a checkpoint of another shape cannot resume)
    "smoke"   what `make smoke` proves (a change needs a new smoke.ok)

`keys(cls, tag)`, `values(cfg, tag)` and `fingerprint(cfg, tag)` read those
tags, so each stage states in one place what shapes its output.

Types this module understands: bool, int, float, str, `list[str]`, `X | None`,
`Literal[...]` (the choices of a key) and unions such as `int | Literal["auto"]`
(tried in order).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from model.errors import ConfigError

T = TypeVar("T")
_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Any = None,
    affects: str | tuple[str, ...] = (),
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A config field: default (or `factory` for a list), help, bounds, what it affects."""
    tags = (affects,) if isinstance(affects, str) else tuple(affects)
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"help": help, "affects": frozenset(tags), "bounds": bounds}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(kw_only=True)
class Config:
    """Base of every stage's config: checks types, choices and bounds when made.

    A subclass adds cross-key checks by overriding `checks()` (call super's);
    every problem found is reported together in one ConfigError.
    """

    def __post_init__(self) -> None:
        problems = _field_problems(self) + self.checks()
        if problems:
            raise ConfigError("; ".join(problems))

    def checks(self) -> list[str]:
        return []


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a config class (cached: they never change)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _field_problems(cfg: Config) -> list[str]:
    hints = _hints(type(cfg))
    out: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        ok, _ = _coerce(value, hints[f.name])
        if not ok:
            out.append(_type_problem(f.name, value, hints[f.name]))
            continue
        for op, limit in f.metadata.get("bounds", {}).items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number and not _within(value, op, limit):
                out.append(f"{f.name}={value} must be {_BOUNDS[op]} {limit:g}")
    return out


def _within(value: float, op: str, limit: float) -> bool:
    return {
        "ge": value >= limit,
        "gt": value > limit,
        "le": value <= limit,
        "lt": value < limit,
    }[op]


# --------------------------------------------------------------- reading


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn `["lr=3e-4", "compile=false"]` into `{"lr": 3e-4, "compile": False}`.

    Values are parsed as YAML scalars or flow lists, so `true`, `4`, `[python, go]`
    and `null` mean what they mean in the config file. No config key takes a
    mapping, so text that YAML would read as one (`prompt=def main():`) or
    cannot read at all stays the string that was typed, and so does unquoted text
    (`prompt=def f(x):\\n    ` keeps its trailing spaces, `prompt=x  # y` its comment).
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
        if isinstance(value, dict) or (
            isinstance(value, str) and not raw.lstrip().startswith(("'", '"'))
        ):
            value = raw  # text as typed: YAML would trim its spaces and drop a `# ...`
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
        return value in typing.get_args(tp) and not isinstance(value, bool), value
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
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return str(tp).replace("typing.", "") if not isinstance(tp, type) else tp.__name__


def _type_problem(name: str, value: Any, tp: Any) -> str:
    what = "must be" if typing.get_origin(tp) is typing.Literal else "is not"
    return f"{name}={value!r} {what} {_type_name(tp)}"


def build(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Make `cls(**values)`, checking every key and type first and failing once."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = _hints(cls)
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
            problems.append(_type_problem(name, value, hints[name]))
        else:
            kwargs[name] = conv
    try:
        made = cls(**kwargs)  # the good keys: its own checks report the rest together
    except ConfigError as e:
        problems.append(str(e))
    except TypeError as e:  # a required key left out
        problems.append(str(e))
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return made


def load(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + command-line overrides -> a checked `cls` instance."""
    values = read_yaml(path) if path is not None else {}
    values.update(parse_overrides(overrides or []))
    return build(cls, values, source=str(path) if path is not None else "config")


# --------------------------------------------------------------- writing and describing


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (for manifests, run folders, hashing)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def keys(cls: type, tag: str) -> tuple[str, ...]:
    """The fields of `cls` declared with `affects=tag`, in declaration order."""
    return tuple(
        f.name for f in dataclasses.fields(cls) if tag in f.metadata.get("affects", frozenset())
    )


def values(cfg: Any, tag: str) -> dict[str, Any]:
    """{key: value} of the fields of `cfg` that affect `tag`."""
    return {k: getattr(cfg, k) for k in keys(type(cfg), tag)}


def fingerprint(cfg: Any, tag: str) -> str:
    """A short stable hash of `values(cfg, tag)` (16 hex digits of sha256)."""
    blob = json.dumps(values(cfg, tag), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def describe(cls: type) -> str:
    """One line per key: name, default and help text (for `--keys`)."""
    lines = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "(required)"
        lines.append(f"  {f.name:<20} {default:<22} {f.metadata.get('help', '')}")
    return "\n".join(lines)
