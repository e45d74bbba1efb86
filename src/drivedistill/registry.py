"""Registry: short name → (config class, builder) for every pluggable component.

A component is one module, named like the component (`models/students/transfuser.py` → "transfuser"),
with its config dataclass on top and a builder decorated by `@register`:

    @register("student", "transfuser", TransfuserConfig)
    def build(cfg: TransfuserConfig) -> Transfuser: ...

Registration is cheap and lazy: `get(kind, name)` imports only that module; `entries(kind)` imports
every module of the kind's package (used by `drivedistill list` and by the contract tests).
The one-line description is the first line of the module docstring.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# kind → package whose modules hold the components of that kind
KIND_PACKAGES: dict[str, str] = {
    "source": "drivedistill.data.sources",
    "student": "drivedistill.models.students",
    "teacher": "drivedistill.models.teachers",
    "method": "drivedistill.methods",
    "metric": "drivedistill.metrics",
    "annotator": "drivedistill.annotate",
    "planner": "drivedistill.sim.planners",
    "recipe": "drivedistill.recipes",
}


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    config_cls: type | None
    builder: Callable[..., Any]
    description: str

    def default_config(self) -> Any:
        return None if self.config_cls is None else self.config_cls()


_REGISTRY: dict[str, dict[str, Entry]] = {k: {} for k in KIND_PACKAGES}


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def register(
    kind: str, name: str, config_cls: type | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering `builder(cfg, ...)` under (kind, name)."""
    if kind not in _REGISTRY:
        raise RegistryError(f"unknown component kind '{kind}'; known kinds: {sorted(_REGISTRY)}")

    def deco(builder: Callable[..., Any]) -> Callable[..., Any]:
        module = sys.modules.get(builder.__module__)
        doc = (module.__doc__ if module is not None else None) or builder.__doc__ or ""
        description = doc.strip().splitlines()[0] if doc.strip() else ""
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing.builder.__module__ != builder.__module__:
            raise RegistryError(
                f"{kind} '{name}' registered twice ({existing.builder.__module__}, {builder.__module__})"
            )
        _REGISTRY[kind][name] = Entry(kind, name, config_cls, builder, description)
        return builder

    return deco


def _package_modules(kind: str) -> list[str]:
    pkg = importlib.import_module(KIND_PACKAGES[kind])
    return [
        m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_") and m.name != "base"
    ]


def get(kind: str, name: str) -> Entry:
    """Look up a component, importing its module on first use. Unknown names suggest the closest one."""
    if kind not in _REGISTRY:
        raise RegistryError(f"unknown component kind '{kind}'; known kinds: {sorted(_REGISTRY)}")
    if name not in _REGISTRY[kind]:
        modname = f"{KIND_PACKAGES[kind]}.{name}"
        try:
            importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:
                raise
    if name not in _REGISTRY[kind]:
        known = names(kind)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise RegistryError(f"unknown {kind} '{name}'.{hint} Registered {kind}s: {', '.join(known)}")
    return _REGISTRY[kind][name]


def entries(kind: str) -> list[Entry]:
    """Every registered component of a kind (imports all modules of its package)."""
    for mod in _package_modules(kind):
        importlib.import_module(f"{KIND_PACKAGES[kind]}.{mod}")
    return sorted(_REGISTRY[kind].values(), key=lambda e: e.name)


def names(kind: str) -> list[str]:
    return [e.name for e in entries(kind)]


def build(kind: str, name: str, cfg: Any = None, **kwargs: Any) -> Any:
    """Build a component; `cfg` defaults to its config class's defaults."""
    entry = get(kind, name)
    if cfg is None:
        cfg = entry.default_config()
    return entry.builder(cfg, **kwargs) if entry.config_cls is not None else entry.builder(**kwargs)
