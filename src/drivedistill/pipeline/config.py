"""The study configuration: which world, which models, how long to train, what to evaluate.

    cfg = load_study("default", "my.yaml", overrides=["--seeds=[0,1,2]", "--train.epochs=4"])

Presets live in `src/drivedistill/configs/<preset>.yaml` (smoke, default, full). Component sections
(`world`, per-student and per-method settings, `train`) are validated against the registered config
classes when the study starts, so a typo fails before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from drivedistill import registry
from drivedistill.config import ConfigError, check, deep_merge, from_dict, load_config, load_yaml

PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class ModelSpec:
    """One row of the study: a student trained with a method.

    name      "<student>/<method>" or "<student>/<method>-<variant>" (e.g. "transfuser/vlm_ad-q1")
    student   registered student; `student_cfg` overrides the study's `students[<student>]`
    method    registered method ("none": evaluate without training, e.g. constant_velocity)
    recipe_cfg  overrides of the method's recipe section for this row only (the recipe's `row_options`,
              e.g. an untrained teacher or shuffled annotations for a control row)
    controls  the row this one is a control of (e.g. "transfuser/vlm_ad" for a KD-weight-0 row)
    max_samples  > 0: train on this many labelled samples (a deterministic subset of the training split;
              recipe stages still see the whole store) — the points of a learning curve
    """

    name: str = ""
    student: str = "transfuser"
    method: str = "imitation"
    student_cfg: dict[str, Any] = field(default_factory=dict)
    method_cfg: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the study's `train`
    recipe_cfg: dict[str, Any] = field(default_factory=dict)
    controls: str = ""
    max_samples: int = field(default=0, metadata=check(ge=0))

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"{self.student}/{self.method}"
        if self.max_samples < 0:
            raise ConfigError(f"models[{self.name}].max_samples={self.max_samples} must be >= 0 (0 = all)")


@dataclass
class EvalStageConfig:
    """What is measured for every (model, seed)."""

    split: str = "val"
    # > 0: evaluate on the first N validation scenes only
    max_scenes: int = field(default=0, metadata=check(ge=0))
    openloop: bool = True  # nuScenes open-loop, both protocols
    pdms: bool = True  # NAVSIM PDMS v1.1 on metric scenes built from the world's scenes
    closedloop_episodes: int = field(default=4, metadata=check(ge=0))  # 0 = skip closed loop
    # batch-1 planning latency samples (after 5 warm-up calls)
    latency_repeats: int = field(default=30, metadata=check(ge=1))
    scene_panels: int = field(default=4, metadata=check(ge=0))  # validation scenes drawn in the report
    expert_reference: bool = True  # add the privileged expert's row (its own plan; it driving closed loop)
    recipe_references: bool = True  # the rows recipes declare from a teacher alone (e.g. an oracle's plans)


@dataclass
class StudyConfig:
    """The whole study (`drivedistill run`)."""

    preset: str = "default"
    seeds: list[int] = field(default_factory=lambda: [0], metadata=check(ge=0))
    device: str = "auto"
    workers: int = field(default=2, metadata=check(ge=1))  # processes for collection
    world: dict[str, Any] = field(default_factory=dict)  # → world.config.WorldConfig
    # a data source instead of the world (configs/nuscenes.yaml): {"name": "nuscenes", <its config fields>}
    source: dict[str, Any] = field(default_factory=dict)
    val_fraction: float = field(default=0.2, metadata=check(gt=0, lt=1))
    episodes_per_shard: int = field(default=4, metadata=check(ge=1))
    # per registered recipe (drivedistill/recipes/<name>.py): its typed config section
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # per_seed: every seeded recipe stage runs once per seed and seed k of a row reads teacher k;
    # once: one teacher per run (cheap runs; the ± then covers the student's seed only)
    teachers: Literal["once", "per_seed"] = "once"
    train: dict[str, Any] = field(default_factory=dict)  # → train.loop.TrainConfig (students)
    students: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-student config overrides
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method config overrides
    models: list[ModelSpec] = field(default_factory=list)
    eval: EvalStageConfig = field(default_factory=EvalStageConfig)
    baseline: str = "transfuser/imitation"  # the row distilled models are compared against in the report

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed, e.g. --seeds=[0]")
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"models: names must be unique, {dupes} repeat; add a -variant suffix")

    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def methods_used(self) -> set[str]:
        return {m.method for m in self.models}

    def recipe(self, name: str, overrides: dict[str, Any] | None = None) -> Any:
        """The typed config of recipe `name`: its defaults ← `recipes.<name>` ← a row's `overrides`."""
        entry = registry.get("recipe", name)
        assert entry.config_cls is not None
        return from_dict(
            entry.config_cls, deep_merge(self.recipes.get(name, {}), overrides or {}), f"recipes.{name}"
        )


def preset_file(preset: str) -> Path:
    path = PRESETS_DIR / f"{preset}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset '{preset}'; presets: {known} (files in {PRESETS_DIR})")
    return path


def load_study(
    preset: str, config: str | Path | None = None, overrides: list[str] | None = None
) -> StudyConfig:
    """Preset YAML, then a user YAML, then dotted overrides → a validated StudyConfig."""
    data = deep_merge(load_yaml(preset_file(preset)), {"preset": preset})
    if config is not None:
        data = deep_merge(data, load_yaml(config))
    cfg = load_config(StudyConfig, data, overrides=overrides or [])
    validate_components(cfg)
    return cfg


def validate_components(cfg: StudyConfig) -> None:
    """Check every component section against its registered config class (fails before any work)."""
    from drivedistill.recipes.base import recipe_of
    from drivedistill.train.loop import TrainConfig
    from drivedistill.world.config import WorldConfig

    from_dict(WorldConfig, cfg.world, "world")
    from_dict(TrainConfig, cfg.train, "train")
    for name in cfg.recipes:
        try:
            registry.get("recipe", name)
        except registry.RegistryError as e:
            raise ConfigError(f"recipes.{name}: {e}") from None
        cfg.recipe(name)
    for m in cfg.models:
        entry = registry.get("student", m.student)
        if entry.config_cls is not None:
            from_dict(
                entry.config_cls,
                deep_merge(cfg.students.get(m.student, {}), m.student_cfg),
                f"models[{m.name}].student_cfg",
            )
        if m.method != "none":
            mentry = registry.get("method", m.method)
            if mentry.config_cls is not None:
                from_dict(
                    mentry.config_cls,
                    deep_merge(cfg.methods.get(m.method, {}), m.method_cfg),
                    f"models[{m.name}].method_cfg",
                )
        from_dict(TrainConfig, deep_merge(cfg.train, m.train), f"models[{m.name}].train")
        found = recipe_of(m.method) if m.method != "none" else None
        if m.recipe_cfg:
            if found is None:
                raise ConfigError(f"models[{m.name}].recipe_cfg: method {m.method} belongs to no recipe")
            recipe = found[0]
            bad = sorted(set(m.recipe_cfg) - set(recipe.row_options))
            if bad:
                raise ConfigError(
                    f"models[{m.name}].recipe_cfg: {bad} cannot differ per row; recipe {recipe.name} "
                    f"allows {list(recipe.row_options)} (set the rest in recipes.{recipe.name})"
                )
            cfg.recipe(recipe.name, m.recipe_cfg)
    names = set(cfg.model_names())
    for m in cfg.models:
        if m.controls and m.controls not in names:
            raise ConfigError(
                f"models[{m.name}].controls: no row named {m.controls!r}; rows: {sorted(names)}"
            )
