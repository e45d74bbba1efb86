"""What a student training run is: student + method (registry names and configs) + `TrainConfig`.

    spec = resolve_run("transfuser", "imitation", "configs/train.yaml", overrides=["--student.hidden_dim=256"])

YAML files and overrides use three sections: `student`, `method`, `train`; the section's config class
comes from the registry entry of the named component, so `--student.hidden_dim` is checked against
the chosen student's config (unknown keys fail with a suggestion).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivedistill import registry
from drivedistill.config import ConfigError, deep_merge, from_dict, load_yaml, parse_overrides, to_dict
from drivedistill.train.loop import TrainConfig

SECTIONS = ("student", "method", "train")


@dataclass
class RunSpec:
    """A resolved run: names, their configs and the optimisation config."""

    student: str
    method: str
    student_cfg: Any
    method_cfg: Any
    train: TrainConfig

    def config(self) -> dict[str, Any]:
        """The sections saved as config.yaml (the loop adds `train`)."""
        return {"student": to_dict(self.student_cfg), "method": to_dict(self.method_cfg)}

    def meta(self) -> dict[str, Any]:
        """Registry names saved in meta.json; the student's weights sit under `student.` in a Method."""
        return {"student": self.student, "method": self.method, "student_prefix": "student."}


def _section(name: str, kind: str | None, data: Mapping[str, Any]) -> Any:
    if kind is None:
        return from_dict(TrainConfig, data, name)
    entry = registry.get(kind, name)
    if entry.config_cls is None:
        if data:
            raise ConfigError(f"{kind} '{name}' takes no configuration, got {sorted(data)}")
        return None
    return from_dict(entry.config_cls, data, kind)


def resolve_run(
    student: str,
    method: str = "imitation",
    *sources: str | Path | Mapping[str, Any] | None,
    overrides: Iterable[str] = (),
) -> RunSpec:
    """Merge YAML files / mappings (sections student, method, train) and dotted overrides into a RunSpec."""
    data: dict[str, Any] = {}
    for src in sources:
        if src is not None:
            data = deep_merge(data, dict(src) if isinstance(src, Mapping) else load_yaml(src))
    data = deep_merge(data, parse_overrides(overrides))
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown config sections {unknown}; a training run has {list(SECTIONS)} (e.g. --train.epochs=5)"
        )
    return RunSpec(
        student,
        method,
        _section(student, "student", data.get("student", {})),
        _section(method, "method", data.get("method", {})),
        _section("train", None, data.get("train", {})),
    )
