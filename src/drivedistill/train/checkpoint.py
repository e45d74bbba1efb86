"""Checkpoints: safetensors weights + resolved config YAML + meta JSON + optimiser/scheduler/RNG state.

Layout of a run directory:

    RUN/checkpoints/step_000120/model.safetensors   trainable weights (frozen teachers excluded)
                               config.yaml          resolved config {"student": ..., "method": ..., "train": ...}
                               meta.json            registry names, step, epoch, versions, method extra state
                               state.pt             optimiser, scheduler, scaler, RNG (plain tensors/dicts;
                                                    read with torch.load(weights_only=True))
    RUN/checkpoints/latest.json                     {"path": "step_000120", "step": 120}

Every file is written atomically (utils/io) into a temporary directory that is renamed into place, and
`latest.json` moves only after that: a killed run leaves the previous checkpoint usable. A temporary
directory a kill left behind (`checkpoints/.step_N.tmp/`) is removed by `remove_partial`; `resume_point`
picks the newest checkpoint whose files all read back (a truncated one is skipped with a warning).

    student = load_student("RUN")            # the run's latest checkpoint, or a step directory
    method = load_method("RUN", context)     # the method with its heads, e.g. to continue distilling
"""

from __future__ import annotations

import json
import logging
import platform
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from drivedistill.utils.io import atomic_write_json, atomic_write_text, atomic_write_with

WEIGHTS, CONFIG, META, STATE, LATEST = (
    "model.safetensors",
    "config.yaml",
    "meta.json",
    "state.pt",
    "latest.json",
)
FORMAT_VERSION = 1
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not match the model; the message says which file."""


def versions() -> dict[str, str]:
    import drivedistill

    out = {"python": platform.python_version(), "torch": torch.__version__}
    out["drivedistill"] = getattr(drivedistill, "__version__", "unknown")
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:  # timm is only needed by camera students
        pass
    return out


def frozen_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes of the modules `model.frozen()` returns (teachers are not saved with a run)."""
    frozen = getattr(model, "frozen", None)
    ids = {id(m) for m in frozen()} if callable(frozen) else set()
    return [f"{name}." if name else "" for name, m in model.named_modules() if id(m) in ids]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict without frozen modules, as contiguous CPU tensors (safetensors rejects shared storage)."""
    skip = frozen_prefixes(model)
    return {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in model.state_dict().items()
        if not any(k.startswith(p) for p in skip)
    }


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as plain tensors/ints, loadable with weights_only=True."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()  # type: ignore[misc]
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss": py_gauss,
        },
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    config: Mapping[str, Any],
    meta: Mapping[str, Any],
    state: Mapping[str, Any] | None = None,
    keep: int = 2,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write RUN/checkpoints/step_{step}/ atomically, point latest.json at it, prune to `keep` checkpoints.

    `weights`: the trainable state to save instead of `trainable_state(model)` (sharded training gathers
    it first, see train/distributed.full_state)."""
    from safetensors.torch import save_file

    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    weights = dict(weights) if weights is not None else trainable_state(model)
    try:
        atomic_write_with(tmp / WEIGHTS, lambda p: save_file(weights, str(p), metadata={"format": "pt"}))
        atomic_write_text(tmp / CONFIG, yaml.safe_dump(dict(config), sort_keys=False))
        full_meta = {"format_version": FORMAT_VERSION, "step": step, **meta, "versions": versions()}
        atomic_write_json(tmp / META, full_meta)
        if state is not None:
            atomic_write_with(tmp / STATE, lambda p: torch.save(dict(state), p))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk: free what this save took
        raise
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_json(root / LATEST, {"path": final.name, "step": step})
    for old in sorted(root.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def remove_partial(run_dir: str | Path) -> list[Path]:
    """Delete the temporary directories of interrupted saves (`checkpoints/.step_N.tmp/`); returns them."""
    root = Path(run_dir) / "checkpoints"
    partial = sorted(root.glob(".step_*.tmp")) if root.is_dir() else []
    for p in partial:
        shutil.rmtree(p, ignore_errors=True)
    return partial


def problem(ckpt: Path) -> str | None:
    """Why checkpoint directory `ckpt` cannot be resumed from (None: every file reads back)."""
    from safetensors import safe_open

    for name in (META, CONFIG, WEIGHTS, STATE):
        if not (ckpt / name).is_file():
            return f"{ckpt / name} is missing"
    try:
        json.loads((ckpt / META).read_text())
        yaml.safe_load((ckpt / CONFIG).read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        return f"{ckpt}: unreadable meta/config ({e})"
    try:
        with safe_open(str(ckpt / WEIGHTS), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118  (safe_open has no __iter__)
                f.get_tensor(key)
    except Exception as e:  # safetensors raises its own error types for a torn header or buffer
        return f"{ckpt / WEIGHTS} is truncated or corrupt ({e})"
    try:
        torch.load(ckpt / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError / pickle errors for a torn zip
        return f"{ckpt / STATE} is truncated or corrupt ({e})"
    return None


def resume_point(run_dir: str | Path) -> Path:
    """The newest checkpoint of a run that reads back completely: latest.json's, else the newest older
    `step_*` (a save cut short by a kill or a full disk is skipped with a warning naming it)."""
    root = Path(run_dir) / "checkpoints"
    candidates = sorted(root.glob("step_*"), reverse=True)
    latest = root / LATEST
    if latest.exists():
        try:
            first = root / json.loads(latest.read_text())["path"]
            candidates = [first] + [c for c in candidates if c != first]
        except (ValueError, KeyError, TypeError):
            pass
    problems: list[str] = []
    for c in candidates:
        why = problem(c)
        if why is None:
            if problems:
                log.warning("resume: skipping %s; resuming from %s", "; ".join(problems), c)
            return c
        problems.append(why)
    raise CheckpointError(
        f"{run_dir}: no usable checkpoint to resume from ({'; '.join(problems) or 'none written'}); "
        "delete the run directory (or choose another --out) and start again"
    )


def resolve(path: str | Path) -> Path:
    """A checkpoint directory (holds meta.json), or a run directory → its latest checkpoint."""
    p = Path(path)
    if (p / META).exists():
        return p
    for latest in (p / "checkpoints" / LATEST, p / LATEST):
        if latest.exists():
            return latest.parent / json.loads(latest.read_text())["path"]
    raise CheckpointError(
        f"{p}: no checkpoint here (expected {META}, checkpoints/{LATEST} or {LATEST}); "
        "pass a run directory written by `drivedistill train` or one of its checkpoints/step_* directories"
    )


def read_meta(path: str | Path) -> dict[str, Any]:
    ckpt = resolve(path)
    return dict(json.loads((ckpt / META).read_text()))


def read_config(path: str | Path) -> dict[str, Any]:
    """The saved config; a student section written before a field existed gets the field's legacy value
    (`LEGACY_STUDENT_FIELDS`), so it compares equal to the same config written today (resume)."""
    ckpt = resolve(path)
    config = dict(yaml.safe_load((ckpt / CONFIG).read_text()) or {})
    meta = read_meta(ckpt) if (ckpt / META).exists() else {}
    if isinstance(config.get("student"), dict) and "student" in meta:
        config["student"] = with_legacy_fields(meta["student"], config["student"])
    return config


def read_state(path: str | Path) -> dict[str, Any]:
    ckpt = resolve(path)
    if not (ckpt / STATE).exists():
        raise CheckpointError(f"{ckpt}: no {STATE}; this checkpoint holds weights only and cannot be resumed")
    try:
        return dict(torch.load(ckpt / STATE, map_location="cpu", weights_only=True))
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{ckpt / STATE} is truncated or corrupt ({e})") from None


def load_weights(path: str | Path, model: nn.Module, prefix: str = "") -> None:
    """Load the checkpoint's weights (keys under `prefix`, stripped) into `model`; every key must match.

    Frozen submodules of `model` (teachers) are not in checkpoints and are not required.
    """
    from safetensors.torch import load_file

    ckpt = resolve(path)
    try:
        saved = load_file(str(ckpt / WEIGHTS))
    except FileNotFoundError:
        raise CheckpointError(f"{ckpt / WEIGHTS} is missing; the checkpoint is incomplete") from None
    except Exception as e:  # safetensors' own error types (torn header, short buffer)
        raise CheckpointError(
            f"{ckpt / WEIGHTS} is truncated or corrupt ({e}); `--resume` falls back to the previous "
            "checkpoint, or retrain"
        ) from None
    weights = {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
    skip = frozen_prefixes(model)
    expected = {k for k in model.state_dict() if not any(k.startswith(p) for p in skip)}
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt / WEIGHTS} does not match {type(model).__name__}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]} ({len(missing)}/{len(unexpected)} in all); was it written by another config?"
        )
    model.load_state_dict(weights, strict=False)


# Student config fields added after checkpoints were first written → the value that reproduces how a
# checkpoint saved before the field existed behaves (checkpoints store the fully resolved config, so a
# missing field means an older writer; the dataclass default may differ).
LEGACY_STUDENT_FIELDS: dict[str, Any] = {
    "cv_prior": False,
    "cv_prior_turns": True,
    "use_ego_history": True,
    "bev_semantic_weight": 0.0,  # off: the student has no auxiliary head (its default)
    "bev_semantic_grid": 8,
}


def with_legacy_fields(student: str, section: Mapping[str, Any]) -> dict[str, Any]:
    """A saved student config section with the legacy value of every later-added field it lacks."""
    import dataclasses

    from drivedistill import registry

    cls = registry.get("student", student).config_cls
    names = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
    missing = {k: v for k, v in LEGACY_STUDENT_FIELDS.items() if k in names and k not in section}
    return {**section, **missing}


def without_legacy_fields(section: Mapping[str, Any]) -> dict[str, Any]:
    """A student config section without the later-added fields at their legacy value — how it enters
    stage keys, so adding a field never invalidates finished stages that behave the same."""
    return {
        k: v for k, v in section.items() if not (k in LEGACY_STUDENT_FIELDS and v == LEGACY_STUDENT_FIELDS[k])
    }


def student_config(meta: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    """The saved student config of a checkpoint as its registered config class (None if it has none)."""
    from drivedistill import registry
    from drivedistill.config import from_dict

    entry = registry.get("student", meta["student"])
    if entry.config_cls is None:
        return None
    saved = with_legacy_fields(meta["student"], config.get("student", {}))
    return from_dict(entry.config_cls, saved, "student")


def load_student(path: str | Path, device: str = "cpu") -> Any:
    """Rebuild the student of a checkpoint from its registry name + saved config, load its weights, eval()."""
    from drivedistill import registry

    meta, config = read_meta(path), read_config(path)
    if "student" not in meta:
        raise CheckpointError(f"{resolve(path)}: meta.json names no student (is this a teacher checkpoint?)")
    student = registry.build("student", meta["student"], student_config(meta, config))
    load_weights(path, student, prefix=meta.get("student_prefix", ""))
    return student.to(device).eval()


def load_method(path: str | Path, context: Any = None, device: str = "cpu") -> Any:
    """Rebuild student + method (its heads included) from a checkpoint; frozen teachers come from `context`."""
    from drivedistill import registry
    from drivedistill.config import from_dict
    from drivedistill.methods.base import MethodContext

    meta, config = read_meta(path), read_config(path)
    if "method" not in meta:
        raise CheckpointError(
            f"{resolve(path)}: meta.json names no method; use load_student for a bare student"
        )
    student = registry.build("student", meta["student"], student_config(meta, config))
    entry = registry.get("method", meta["method"])
    cfg = from_dict(entry.config_cls, config.get("method", {}), "method") if entry.config_cls else None
    method = entry.builder(cfg, student=student, context=context or MethodContext(device=device))
    load_weights(path, method)
    return method.to(device)
