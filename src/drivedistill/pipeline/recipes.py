"""The recipes in a study: which recipe stages each row needs, run in order, cached; read by the student stages.

Nothing here names a recipe: the registered recipes (kind "recipe", `drivedistill/recipes/`) declare
their stages and methods (recipes/base.py). A row whose method belongs to a recipe needs the stages its
`MethodUse.needs` names, plus the earlier stages those read. Each stage runs once per distinct key:

- teachers `once`: one instance per stage (the recipe's own seeds);
- teachers `per_seed`: a seeded stage runs once per study seed k (instance `<stage>-s<k>`), and seed k
  of a row reads teacher k;
- a row's `recipe_cfg` (a control, e.g. an untrained teacher) gives a variant; its stages whose key
  does not change are the default's (the same directory), the others are labelled `<stage>~<variant>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivedistill.config import config_hash, deep_merge
from drivedistill.pipeline.cache import Artifact, StageRunner
from drivedistill.pipeline.config import ModelSpec, StudyConfig

__all__ = ["RecipeStages", "all_recipes", "baseline_row", "recipe_of", "static_needs"]
from drivedistill.recipes.base import Recipe, Stage, StageContext, all_recipes, recipe_of


def baseline_row(model: ModelSpec, rows: list[ModelSpec] | None = None) -> str | None:
    """The row `model` is compared against: its recipe's declared baseline method on the same student.

    Without `rows`: its canonical name "<student>/<baseline method>". With the study's rows: the row
    of that student and method trained on as many labelled samples (a learning curve's point), no
    control, preferring the canonical name, then a row without config overrides (None if none)."""
    found = recipe_of(model.method)
    if found is None or found[1].baseline is None:
        return None
    canonical = f"{model.student}/{found[1].baseline}"
    if rows is None:
        return canonical
    candidates = [
        r
        for r in rows
        if r.student == model.student
        and r.method == found[1].baseline
        and r.max_samples == model.max_samples
        and not r.controls
    ]
    if not candidates:
        return None
    best = min(candidates, key=lambda r: (r.name != canonical, bool(r.student_cfg or r.method_cfg)))
    return best.name


def code_version(method: str) -> int | None:
    found = recipe_of(method)
    return None if found is None else found[1].code_version


def method_cost(method: str) -> float:
    found = recipe_of(method)
    return 1.0 if found is None else found[1].cost


def stage_cost(label: str) -> float:
    """Rough cost of a stage instance (`<stage>[-s<k>][~<variant>]`) as its recipe declares it."""
    base = label.split("~")[0].rsplit("-s", 1)[0]
    for recipe in all_recipes().values():
        for s in recipe.stages:
            if s.name == base:
                return s.cost
    return 1.0


def row_recipe_config(cfg: StudyConfig, model: ModelSpec) -> Any:
    """The typed config of the row's recipe: `recipes.<name>` ← the row's `recipe_cfg` (None: no recipe)."""
    found = recipe_of(model.method)
    if found is None:
        return None
    return cfg.recipe(found[0].name, model.recipe_cfg)


def variant_label(model: ModelSpec) -> str:
    """ "" for the study's recipe config; a short hash of the row's `recipe_cfg` otherwise."""
    return f"v{config_hash(model.recipe_cfg, length=6)}" if model.recipe_cfg else ""


@dataclass
class RecipeStages:
    """Runs (or, dry, keys) the recipe stages the rows need, each distinct key once."""

    runner: StageRunner
    cfg: StudyConfig
    store: Artifact
    by_path: dict[Path, tuple[str, Artifact]] = field(default_factory=dict)  # stage dir → (label, artifact)
    results: dict[tuple[str, str, int | None], dict[str, tuple[str, Artifact]]] = field(default_factory=dict)

    def teacher_seed(self, seed: int) -> int | None:
        return seed if self.cfg.teachers == "per_seed" else None

    def _run_recipe(
        self, recipe: Recipe, recipe_cfg: Any, variant: str, tseed: int | None, stages: list[Stage]
    ) -> dict[str, tuple[str, Artifact]]:
        done = self.results.setdefault((recipe.name, variant, tseed), {})
        seeded: set[str] = set()
        for stage in recipe.stages:
            if stage.seeded or any(n in seeded for n in stage.needs):
                seeded.add(stage.name)
            if stage not in stages or stage.name in done:
                continue
            seed = tseed if stage.name in seeded else None
            base = stage.name + (f"-s{seed}" if seed is not None else "")
            label = base + (f"~{variant}" if variant else "")
            ctx = _DedupContext(
                name=stage.name,
                code_version=stage.code_version,
                runner=self.runner,
                store=self.store,
                prior={n: done[n][1] for n in stage.needs},
                seed=seed,
                device=self.cfg.device,
                instance=base,
                label=label,
                owner=self,
            )
            art = stage.run(recipe_cfg, ctx)  # the runner's artifact, recorded by `ctx.run` under its path
            done[stage.name] = self.by_path[art.path]
        return done

    def for_model(self, model: ModelSpec, seed: int) -> list[tuple[str, Artifact]]:
        """(label, artifact) of every recipe stage seed `seed` of `model` reads, in pipeline order."""
        found = recipe_of(model.method)
        if found is None:
            return []
        recipe, use = found
        stages = recipe.closure(use.needs)
        done = self._run_recipe(
            recipe, row_recipe_config(self.cfg, model), variant_label(model), self.teacher_seed(seed), stages
        )
        return [done[s.name] for s in stages]

    def quality(self) -> dict[str, Any]:
        """results.json `teacher_quality`: per recipe (and variant / teacher seed) its gate metrics."""
        out: dict[str, Any] = {}
        for (name, variant, tseed), done in self.results.items():
            recipe = all_recipes()[name]
            if recipe.quality is None or not done:
                continue
            label = name + (f"~{variant}" if variant else "") + (f"-s{tseed}" if tseed is not None else "")
            variant_cfg = next(
                (m.recipe_cfg for m in self.cfg.models if variant and variant_label(m) == variant), {}
            )
            gate = recipe.quality(self.cfg.recipe(name, variant_cfg), {n: a for n, (_, a) in done.items()})
            out[label] = gate
        return out


@dataclass
class _DedupContext(StageContext):
    """A StageContext whose `run` reuses a stage directory an earlier row already resolved (same key)."""

    label: str = ""
    owner: RecipeStages | None = None

    def run(self, cfg: Any, inputs: list[Artifact], fn: Any) -> Artifact:
        assert self.owner is not None
        runner = self.owner.runner
        key_cfg = self.key_config(cfg)
        key = runner.key(self.instance, key_cfg, inputs)
        path = runner.stage_root / f"{self.instance}-{key}"
        if path in self.owner.by_path:
            return self.owner.by_path[path][1]
        art = runner.run(self.instance, key_cfg, inputs, fn, label=self.label)
        self.owner.by_path[art.path] = (self.label, art)
        return art


def student_paths(deps: list[Artifact], student: str) -> dict[str, Any]:
    """Student config overrides that point at recipe artifacts (e.g. the VLA's perception-pretrained
    VLM), with paths made absolute."""

    def absolute(node: Any, base: Path) -> Any:
        return {k: absolute(v, base) for k, v in node.items()} if isinstance(node, dict) else str(base / node)

    out: dict[str, Any] = {}
    for a in deps:
        node = a.summary.get("student_paths", {}).get(student)
        if node:
            out = deep_merge(out, absolute(node, a.path))
    return out


def method_artifacts(deps: list[Artifact]) -> dict[str, Path]:
    """Named artifacts (e.g. "teacher/vlm") the recipe stages declared, as absolute paths."""
    return {name: a.path / rel for a in deps for name, rel in a.summary.get("artifacts", {}).items()}


def row_metrics(
    cfg: StudyConfig, model: ModelSpec, module: Any, store: Any, tokens: list[str]
) -> dict[str, Any]:
    """Extra metric blocks the row's recipe measures on the deployable module (e.g. a perception probe)."""
    found = recipe_of(model.method)
    if found is None or found[0].row_metrics is None:
        return {}
    return found[0].row_metrics(row_recipe_config(cfg, model), module, store, tokens)


def static_needs(cfg: StudyConfig) -> dict[str, list[str]]:
    """Row → the recipe stage labels it reads, from the config alone (no store, no keys): what the
    scheduler gets from a dry run, except that a control's stages whose key would not change are
    labelled as the control's own here."""
    out: dict[str, list[str]] = {}
    for model in cfg.models:
        found = recipe_of(model.method)
        labels: list[str] = []
        if found is not None:
            recipe, use = found
            variant = variant_label(model)
            seeded: set[str] = set()
            for stage in recipe.stages:
                if stage.seeded or any(n in seeded for n in stage.needs):
                    seeded.add(stage.name)
            tseeds: list[int | None] = list(cfg.seeds) if cfg.teachers == "per_seed" else [None]
            for tseed in tseeds:
                for stage in recipe.closure(use.needs):
                    seed = tseed if stage.name in seeded else None
                    label = (
                        stage.name
                        + (f"-s{seed}" if seed is not None else "")
                        + (f"~{variant}" if variant else "")
                    )
                    if label not in labels:
                        labels.append(label)
        out[model.name] = labels
    return out
