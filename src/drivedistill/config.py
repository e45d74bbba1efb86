"""Dataclass configs: YAML files plus dotted command-line overrides, strictly validated.

    cfg = load_config(StudyConfig, "configs/default.yaml", ["--world.num_episodes=20"])

- Unknown keys fail with the full dotted path and a "did you mean" suggestion.
- Values are converted to the annotated field type (int, float, bool, str, list, tuple, nested dataclass).
- Every loaded value is validated (`validate`): floats must be finite, and a field may declare a range
  or a path that must exist in its metadata with `check(...)`:

      lr: float = field(default=3e-4, metadata=check(gt=0))
      val_fraction: float = field(default=0.2, metadata=check(gt=0, lt=1))
      hidden_dims: tuple[int, ...] = field(default=(64, 64), metadata=check(ge=1))  # every element
      weights: str = field(default="", metadata=check(exists=True))  # "" = unset

  The error names the dotted field, the value and what is allowed: `train.lr=-0.001: must be > 0`.
- `to_dict` / `config_hash` give the resolved form that is saved beside every artifact.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key and the fix."""


CHECK = "drivedistill.check"  # the dataclass field metadata key `check()` fills


@dataclasses.dataclass(frozen=True)
class Check:
    """Constraints on one config field (see `check`)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    finite: bool = True
    exists: bool = False

    def describe(self) -> str:
        """The allowed values in words, e.g. `> 0`, `in (0, 1)`, `>= 1`."""
        low = (self.gt, "(") if self.gt is not None else (self.ge, "[") if self.ge is not None else None
        high = (self.lt, ")") if self.lt is not None else (self.le, "]") if self.le is not None else None
        if low and high:
            return f"in {low[1]}{_num(low[0])}, {_num(high[0])}{high[1]}"
        if low:
            return f"{'>' if self.gt is not None else '>='} {_num(low[0])}"
        if high:
            return f"{'<' if self.lt is not None else '<='} {_num(high[0])}"
        return "finite" if self.finite else "any number"

    def problem(self, value: Any) -> str | None:
        """Why `value` breaks this check (None if it does not)."""
        if self.exists:
            if isinstance(value, str | Path) and str(value) and not Path(value).exists():
                return "no such file or directory; give an existing path"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if self.finite and not math.isfinite(value):
            return f"must be a finite number{'' if self.describe() == 'finite' else ', ' + self.describe()}"
        bad = (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        )
        return f"must be {self.describe()}" if bad else None


def _num(x: float | None) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def check(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    finite: bool = True,
    exists: bool = False,
) -> dict[str, Check]:
    """Field metadata declaring the allowed values: `field(default=..., metadata=check(gt=0))`.

    gt/ge/lt/le  bounds (numbers; applied to every element of a list/tuple field and to every value of a
                 dict field)
    finite       reject NaN/±inf (every float field does this unless it declares `check(finite=False)`)
    exists       the value is a path that must exist ("" = unset, not checked)
    """
    return {CHECK: Check(gt=gt, ge=ge, lt=lt, le=le, finite=finite, exists=exists)}


_FINITE = Check()


def _check_value(value: Any, rule: Check, path: str) -> None:
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_value(v, rule, f"{path}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_value(v, rule, f"{path}.{k}")
        return
    problem = rule.problem(value)
    if problem:
        raise ConfigError(f"{path}={value!r}: {problem}")


def validate(cfg: Any, path: str = "") -> None:
    """Check every field of dataclass `cfg` (nested dataclasses included) against its `check(...)`
    metadata, and every float for finiteness; raise `ConfigError` naming the dotted field, the value and
    the allowed range. `from_dict` / `load_config` call it, so `--dry-run` catches a bad value."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        full = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate(value, full)
            continue
        if isinstance(value, list | tuple) and any(dataclasses.is_dataclass(v) for v in value):
            for i, v in enumerate(value):
                if dataclasses.is_dataclass(v) and not isinstance(v, type):
                    validate(v, f"{full}[{i}]")
            continue
        _check_value(value, f.metadata.get(CHECK, _FINITE), full)


def _did_you_mean(key: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Convert `value` (from YAML or a CLI string) to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return _untyped(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: cannot read {value!r} as {tp}: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(
                f"{path}: {value!r} is not one of {list(args)}.{_did_you_mean(str(value), map(str, args))}"
            )
        return args[list(args).index(value)]  # the literal itself, not command-line text (dumps as YAML)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path, _validate=False)  # the outermost call validates the whole tree
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            value = (
                yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
            )
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {k: _untyped(v) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "on", "false", "0", "no", "off"}:
            return value.lower() in {"true", "1", "yes", "on"}
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp in (int, float, str):
        if isinstance(value, bool) and tp is not str:
            raise ConfigError(f"{path}: expected {tp.__name__}, got a boolean {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and not float(value).is_integer():
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return out
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "", _validate: bool = True) -> T:
    """Build dataclass `cls` from a mapping; unknown keys and bad values (types, `check` ranges, NaN/inf)
    raise `ConfigError` naming the dotted field."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else key
        if key not in known:
            raise ConfigError(
                f"unknown config key '{full}'.{_did_you_mean(key, known)} Known keys: {sorted(known)}"
            )
        kwargs[key] = _convert(value, hints[key], full)
        if not dataclasses.is_dataclass(kwargs[key]):  # before __post_init__, so the dotted name is reported
            _check_value(kwargs[key], known[key].metadata.get(CHECK, _FINITE), full)
    try:
        out = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{path or cls.__name__}: {e}") from None
    if _validate:
        validate(out, path)
    return out


def to_dict(cfg: Any) -> Any:
    """Resolved plain-data form of a config (dataclasses → dicts, tuples → lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def config_hash(*parts: Any, length: int = 12) -> str:
    """Stable content hash of configs / plain data (order-independent for dict keys)."""
    blob = json.dumps([to_dict(p) for p in parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


class OverrideText(str):
    """A value written on the command line: typed by its dataclass field later, or — where no field
    types it (free-form sections such as `students:`) — read as a YAML scalar, so that
    `--students.transfuser.hidden_dim=128` means the same as `hidden_dim: 128` in a file (and hashes
    the same in stage keys)."""


def _untyped(value: Any) -> Any:
    """Values under an untyped (Any) field: command-line text read as YAML, containers recursively."""
    if isinstance(value, OverrideText):
        parsed = yaml.safe_load(str(value)) if value.strip() else str(value)
        return str(value) if isinstance(parsed, str) else parsed
    if isinstance(value, Mapping):
        return {k: _untyped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untyped(v) for v in value]
    return value


def parse_overrides(args: Iterable[str]) -> dict[str, Any]:
    """`["--a.b=1", "c=x"]` → `{"a": {"b": "1"}, "c": "x"}` (values stay text, `OverrideText`; types come
    from the dataclass fields later, untyped places read them as YAML)."""
    out: dict[str, Any] = {}
    for arg in args:
        text = arg[2:] if arg.startswith("--") else arg
        if "=" not in text:
            raise ConfigError(f"override '{arg}' must look like --section.key=value")
        key, value = text.split("=", 1)
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{arg}' conflicts with an earlier override of '{p}'")
        node[parts[-1]] = OverrideText(value)
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(
    cls: type[T],
    *sources: str | Path | Mapping[str, Any] | None,
    overrides: Iterable[str] = (),
) -> T:
    """Merge YAML files / mappings in order, then dotted overrides, into dataclass `cls`."""
    data: dict[str, Any] = {}
    for src in sources:
        if src is None:
            continue
        layer = dict(src) if isinstance(src, Mapping) else load_yaml(src)
        data = deep_merge(data, layer)
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def save_resolved(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically) beside an artifact."""
    from drivedistill.utils.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
