"""Typed, validated views of `params.yaml` sections.

Each stage turns its section into a frozen dataclass at its edge. Library code only ever sees
these objects. Validation is strict on purpose: a typo in `params.yaml` (an unknown key, a
string where a number belongs, a fraction above 1) must stop the stage with one line naming
the key, not train a different model than the user asked for.

Bounds and choices live in field metadata:

    lr: float = field(default=1e-3, metadata=spec(gt=0))
    source: str = field(default="demo", metadata=spec(choices=("demo", "folder", "inat")))
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

# Test hook: with this variable naming a file, each process appends "<argv[0]>\t<key>" there for
# every params key it reads from a config object (tests/test_dvc_deps.py checks that each stage
# reads only the params its dvc.yaml entry declares). Unset, configs are plain dataclasses.
TRACE_ENV = "SNAKEID_PARAMS_TRACE"


class ParamsError(ValueError):
    """A params section is invalid; the message names the offending key."""


def spec(
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> dict[str, Any]:
    """Field metadata describing the allowed values of a config field."""
    return {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    with open(path) as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return params


def merge_params(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied at any depth (a mapping merges, anything else replaces)."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge_params(base.get(k) or {}, v) if isinstance(v, Mapping) else v
    return out


def section(params: Mapping[str, Any], name: str, cls: type[T]) -> T:
    """Validate `params[name]` against dataclass `cls` and return the frozen config."""
    raw = params.get(name, {})
    if raw is None:
        raw = {}
    return from_dict(cls, raw, prefix=name)


def from_dict(cls: type[T], raw: Any, *, prefix: str) -> T:
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{prefix}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(
            f"{prefix}.{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}"
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamsError(f"{key}: required key is missing")
            continue
        values[name] = _check(_coerce(raw[name], hints[name], key), f.metadata, key)
    trace = os.environ.get(TRACE_ENV)
    if not trace:
        return cls(**values)
    cfg = _traced(cls)(**values)
    object.__setattr__(cfg, "_trace", (trace, prefix))
    return cfg


@functools.cache
def _traced(cls: type[T]) -> type[T]:
    """`cls` whose instances record each leaf field read (see TRACE_ENV)."""
    names = frozenset(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    seen: set[str] = set()

    def __getattribute__(self: Any, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if name in names and not dataclasses.is_dataclass(value):
            path, prefix = object.__getattribute__(self, "__dict__").get("_trace", ("", ""))
            key = f"{prefix}.{name}"
            if path and key not in seen:
                seen.add(key)
                with open(path, "a") as f:
                    f.write(f"{sys.argv[0]}\t{key}\n")
        return value

    def __reduce__(self: Any) -> tuple[type[T], tuple[Any, ...]]:
        # pickled (to a worker process) as the plain config: every field counts as read
        return cls, tuple(getattr(self, f.name) for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    methods = {"__getattribute__": __getattribute__, "__reduce__": __reduce__}
    return type(cls.__name__, (cls,), methods)  # type: ignore[return-value]


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ParamsError as e:
                errors.append(str(e))
        raise ParamsError(
            errors[0] if len(errors) == 1 else f"{key}: expected {_name(tp)}, got {value!r}"
        )
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, prefix=key)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported config type {tp!r}")  # a bug in a config class


def _check(value: Any, meta: Mapping[str, Any], key: str) -> Any:
    if value is None or not meta:
        return value
    items = value if isinstance(value, tuple) else (value,)
    for v in items:
        choices = meta.get("choices")
        if choices is not None and v not in choices:
            raise ParamsError(f"{key}: {v!r} is not one of {', '.join(map(str, choices))}")
        if isinstance(v, int | float) and not isinstance(v, bool):
            for op, bound, ok in (
                ("≥", meta.get("ge"), lambda x, b: x >= b),
                (">", meta.get("gt"), lambda x, b: x > b),
                ("≤", meta.get("le"), lambda x, b: x <= b),
                ("<", meta.get("lt"), lambda x, b: x < b),
            ):
                if bound is not None and not ok(v, bound):
                    raise ParamsError(f"{key}: {v!r} is out of range (must be {op} {bound})")
    return value


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-dict form of a config, for provenance in checkpoints and metrics."""
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------------------------
# The `base` section: settings every stage shares.


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    seed: int = 42
    species_file: str = "data/taxa.yaml"
    # Input side; None = the backbone's native size (the largest one when there are several).
    image_size: int | None = dataclasses.field(default=None, metadata=spec(ge=32, le=1024))
    # One backbone, or a list whose pooled features are concatenated (names: snakeid.model.models).
    backbone: str | tuple[str, ...] = (
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
    )
    device: str = dataclasses.field(
        default="auto", metadata=spec(choices=("auto", "cpu", "cuda", "mps"))
    )
    deterministic: bool = True
    threads: int = dataclasses.field(default=0, metadata=spec(ge=0))  # 0 = torch's default


def base_config(params: Mapping[str, Any]) -> BaseConfig:
    return section(params, "base", BaseConfig)
