"""Train one student with one method on a data set: the few lines the CLI and the pipeline share.

spec = resolve_run("transfuser", "imitation", overrides=["--train.epochs=5"])
result = train_student(spec, SceneDataset(store, "train"), "runs/transfuser")
student = load_student("runs/transfuser")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from drivedistill import registry
from drivedistill.methods.base import MethodContext
from drivedistill.train.config import RunSpec
from drivedistill.train.loop import TrainResult, fit
from drivedistill.types import Scene
from drivedistill.utils.runtime import seed_everything


def fill_from_data(spec: RunSpec, sample: Scene) -> RunSpec:
    """Set data-dependent student fields left at 0 ("from the data"): today `bev_channels`."""
    cfg = spec.student_cfg
    if getattr(cfg, "bev_channels", None) == 0:
        channels = int(sample.agent_input.bev.shape[-1])
        return dataclasses.replace(spec, student_cfg=dataclasses.replace(cfg, bev_channels=channels))
    return spec


def input_shapes(sample: Scene) -> dict[str, list[int]]:
    """(H, W, C) of the camera and the BEV raster, saved in meta.json for export and benchmarks."""
    ai = sample.agent_input
    return {"camera": list(ai.camera.shape), "bev": list(ai.bev.shape)}


class WithExtras:
    """A collate function that adds per-token arrays (`Method.precompute_extras`) to `Batch.extras`."""

    def __init__(self, base: Callable[[Sequence[Scene]], Any], extras: dict[str, dict[str, Any]]) -> None:
        self.base, self.extras = base, extras

    def __call__(self, scenes: Sequence[Scene]) -> Any:
        from drivedistill.data.dataset import collate_extras

        batch = self.base(scenes)
        both = sorted(set(batch.extras) & set(self.extras))
        if both:
            raise ValueError(f"extras {both} are both in the data and precomputed by the method")
        batch.extras.update(collate_extras(scenes, self.extras))
        return batch


def build_method(spec: RunSpec, context: MethodContext | None = None) -> Any:
    """Student + method from a resolved spec (seeded by `spec.train.seed`)."""
    seed_everything(spec.train.seed)
    student = registry.build("student", spec.student, spec.student_cfg)
    ctx = context or MethodContext(seed=spec.train.seed)
    return registry.build("method", spec.method, spec.method_cfg, student=student, context=ctx)


def train_student(
    spec: RunSpec,
    data: Dataset[Scene] | Sequence[Scene],
    out_dir: str | Path,
    *,
    context: MethodContext | None = None,
    collate: Callable[[Sequence[Scene]], Any] | None = None,
    resume: bool = False,
    abort_after_step: int = 0,
) -> TrainResult:
    """Train `spec` on `data` (a dataset of Scenes, e.g. SceneDataset) into `out_dir`; see `loop.fit`.

    `collate` defaults to `data.collate` (SceneDataset: with its extras) or `data.dataset.collate`.
    The method's `required_extras` must be in the collated batches (checked on the first sample).
    """
    if collate is None:
        collate = getattr(data, "collate", None)
    if collate is None:
        from drivedistill.data.dataset import collate as default_collate

        collate = default_collate
    first = data[0]
    spec = fill_from_data(spec, first)
    method = build_method(spec, context)
    pre = method.precompute_extras(data, collate, spec.train.batch_size)  # type: ignore[arg-type]
    if pre:
        collate = WithExtras(collate, pre)
    extras = collate([first]).extras
    missing = [k for k in method.required_extras if k not in extras]
    if missing:
        raise KeyError(
            f"method '{spec.method}' needs batch extras {missing}, the data provides {sorted(extras)}; "
            "pass them to SceneDataset(store, split, extras=...) from the stage that produces them"
        )
    return fit(
        method,
        data,
        spec.train,
        out_dir,
        collate=collate,
        config=spec.config(),
        meta={**spec.meta(), "input_shapes": input_shapes(first)},
        resume=resume,
        abort_after_step=abort_after_step,
    )
