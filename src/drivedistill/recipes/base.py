"""What a recipe declares: its stages, its methods, their baselines, reference rows and quality gates.

A recipe is one module of `drivedistill.recipes` (see docs/recipes.md) holding a typed config dataclass
(the study's `recipes.<name>` section) and a builder registered as kind "recipe" that returns a
`Recipe`. The pipeline (pipeline/study.py, jobs.py) only walks these declarations:

- `stages`     run before the students train, in order; each turns the store (and earlier stages of
               the same recipe) into a cached artifact: per-sample extras, teacher checkpoints.
- `methods`    the registered methods the recipe owns: which of its stages each reads, the method its
               rows are compared against (`baseline`), and a `code_version`.
- `references` rows evaluated from a recipe artifact alone (e.g. a teacher planning by itself).
- `quality`    gate metrics of the recipe's teachers, computed after its stages (results.json
               `teacher_quality`).
- `student_gate` the part of the gate that needs the run's students (e.g. "the oracle plans at half the
               best imitation student's L2"), computed from results.json's rows after evaluation and
               merged into `teacher_quality` (`vs_students`; `pass` needs both parts).

Cache keys: a stage's key covers its config (what it reads of the typed recipe config), the keys of
its inputs and its `code_version`; a train stage's key covers the resolved run spec and its method's
`code_version`. Bump a `code_version` when the code changes what a stage or method computes with an
unchanged config, so that cached results of the old code are not reused (docs/recipes.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class Artifact(Protocol):
    """A finished (or, in a dry run, planned) stage as the pipeline's runner returns it
    (pipeline.cache.Artifact): its directory, content key and the summary its function returned."""

    @property
    def key(self) -> str: ...
    @property
    def path(self) -> Path: ...
    @property
    def summary(self) -> dict[str, Any]: ...
    def store_dir(self) -> Path: ...


class StageRunner(Protocol):
    """What runs a stage once per key (pipeline.cache.StageRunner)."""

    def run(
        self,
        name: str,
        cfg: Any,
        inputs: list[Any],
        fn: Callable[[Path], dict[str, Any]],
        label: str | None = None,
    ) -> Any: ...


@dataclass
class StageContext:
    """What a stage function gets besides the recipe's typed config.

    store   the collect stage (its `store_dir()` is the scene store)
    prior   artifacts of this recipe's earlier stages (same teacher seed), by stage name
    seed    the teacher seed: the study's seed k under `teachers: per_seed`, else the recipe's own
    device  the study's device
    """

    name: str
    code_version: int
    runner: StageRunner
    store: Artifact
    prior: dict[str, Artifact]
    seed: int | None
    device: str
    instance: str  # the stage directory's name: `name`, with `-s<k>` per seed and `-<variant>`

    def key_config(self, cfg: Any) -> dict[str, Any]:
        """What keys the stage: its `cfg` (what it reads of the recipe config), its code_version and
        the teacher seed (the keys of its inputs are added by the runner)."""
        key_cfg: dict[str, Any] = {"cfg": cfg, "code_version": self.code_version}
        if self.seed is not None:
            key_cfg["teacher_seed"] = self.seed
        return key_cfg

    def run(self, cfg: Any, inputs: list[Any], fn: Callable[[Path], dict[str, Any]]) -> Any:
        """Run `fn(stage_dir) -> summary` once per key (`key_config(cfg)` + the keys of `inputs`);
        `cfg` is plain data or dataclasses."""
        return self.runner.run(self.instance, self.key_config(cfg), inputs, fn)


StageFn = Callable[[Any, StageContext], Artifact]


@dataclass(frozen=True)
class Stage:
    """One recipe stage.

    name          unique over all recipes (it names the stage directory and `--dry-run` lines)
    run           `run(recipe_cfg, ctx) -> Artifact`; calls `ctx.run(stage_cfg, inputs, fn)`
    needs         earlier stages of this recipe whose artifacts it reads (`ctx.prior`)
    seeded        True: it trains something from a seed, so `teachers: per_seed` runs it once per study
                  seed; False: it is deterministic (e.g. rule annotations) and runs once
    code_version  bump when the code changes what it computes with an unchanged config
    cost          rough cost relative to one transfuser/imitation (model, seed): orders parallel work
    """

    name: str
    run: StageFn
    needs: tuple[str, ...] = ()
    seeded: bool = True
    code_version: int = 1
    cost: float = 1.0


@dataclass(frozen=True)
class MethodUse:
    """A registered method of the recipe.

    needs         recipe stages whose extras / named artifacts the method reads
    baseline      the method whose row (same student) this method's rows are compared against; None: the
                  method is itself a baseline (e.g. vla_sft, which only needs the perception stage)
    code_version  bump when the method's training changes with an unchanged config (re-keys its train
                  stages)
    cost          rough cost of one (model, seed) relative to the same student under imitation
    """

    method: str
    needs: tuple[str, ...]
    baseline: str | None = "imitation"
    code_version: int = 1
    cost: float = 1.0


# plan(recipe_cfg, artifact, validation scenes) -> ((N, 8, 3) plans in the ego frame, extra metric blocks)
ReferenceFn = Callable[[Any, Artifact, list[Any]], tuple[Any, dict[str, Any]]]
# quality(recipe_cfg, artifacts by stage name) -> {"pass": bool, "metrics": {...}, ...}
QualityFn = Callable[[Any, Mapping[str, Artifact]], dict[str, Any]]
# student_gate(recipe_cfg, results.json "models") -> {"pass": bool, "checks": {...}, "metrics": {...}}:
# the part of a teacher's gate that compares it with the students of the same run (after evaluation)
StudentGateFn = Callable[[Any, Mapping[str, Any]], dict[str, Any]]
# evaluate(recipe_cfg, deployable module, store, validation tokens) -> extra metric blocks of a row
RowMetricsFn = Callable[[Any, Any, Any, list[str]], dict[str, Any]]


@dataclass(frozen=True)
class Reference:
    """A row planned by one recipe artifact alone (a teacher), scored by the pipeline like any row on
    the validation scenes (open loop, PDMS; no closed loop, no latency). Named "<who>/privileged" when it
    reads privileged information (e.g. EvoDrive's oracle, which sees future frames)."""

    row: str
    stage: str
    plan: ReferenceFn
    key: Callable[[Any], Any] = lambda cfg: {}  # what of the recipe config keys its eval stage


@dataclass(frozen=True)
class Recipe:
    """A registered recipe (kind "recipe"); see the module docstring and docs/recipes.md."""

    name: str
    stages: tuple[Stage, ...]
    methods: tuple[MethodUse, ...]
    references: tuple[Reference, ...] = ()
    quality: QualityFn | None = None
    student_gate: StudentGateFn | None = None  # the teacher against this run's students (after eval)
    row_metrics: RowMetricsFn | None = None  # extra metrics of its methods' rows (e.g. a probe)
    row_metrics_key: Callable[[Any], Any] = lambda cfg: {}  # what of the config keys row_metrics
    # a row's extras as its method reads them, given the row's recipe config (e.g. a shuffled control)
    prepare_extras: Callable[[Any, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]] | None = None
    row_options: tuple[str, ...] = field(default=())  # recipe fields a row may override (controls)

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        for s in self.stages:
            early = names[: names.index(s.name)]
            missing = [n for n in s.needs if n not in early]
            if missing:
                raise ValueError(f"recipe {self.name}: stage {s.name} needs {missing}, not earlier stages")
        for m in self.methods:
            missing = [n for n in m.needs if n not in names]
            if missing:
                raise ValueError(f"recipe {self.name}: method {m.method} needs unknown stages {missing}")

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def method(self, name: str) -> MethodUse | None:
        return next((m for m in self.methods if m.method == name), None)

    def closure(self, needs: tuple[str, ...]) -> list[Stage]:
        """The stages `needs` reads, with the earlier stages they read, in pipeline order."""
        wanted = set(needs)
        for s in reversed(self.stages):
            if s.name in wanted:
                wanted |= set(s.needs)
        return [s for s in self.stages if s.name in wanted]


def store_image_hw(store: Artifact) -> tuple[int, int]:
    """(H, W) [px] of the store's camera: the default size the recipes' VLMs read images at."""
    from drivedistill.data.store import SceneStore

    cam = SceneStore(store.store_dir()).config.get("world", {}).get("camera", {})
    return (int(cam.get("height", 128)), int(cam.get("width", 256)))


@functools.cache
def all_recipes() -> dict[str, Recipe]:
    """Every registered recipe's declaration, by name (imports every module of drivedistill.recipes)."""
    from drivedistill import registry

    return {e.name: e.builder(e.default_config()) for e in registry.entries("recipe")}


def recipe_of(method: str) -> tuple[Recipe, MethodUse] | None:
    """The recipe that owns `method` and its declaration there (None: a plain method, e.g. imitation)."""
    for recipe in all_recipes().values():
        use = recipe.method(method)
        if use is not None:
            return recipe, use
    return None
