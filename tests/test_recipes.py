"""Recipes as registered components: declarations, strict typed configs, and the pipeline's walk over them.

A toy fourth recipe (registered here, removed afterwards) runs through `RecipeStages` on a fake store:
per-seed teachers give one instance per seed, a control's variant reuses the stages its option does not
change, and the pipeline's code names no recipe.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivedistill import registry
from drivedistill.config import ConfigError
from drivedistill.pipeline import recipes as pipeline_recipes
from drivedistill.pipeline.cache import Artifact, StageRunner
from drivedistill.pipeline.config import ModelSpec, StudyConfig, load_study
from drivedistill.pipeline.recipes import RecipeStages, all_recipes, baseline_row, recipe_of, static_needs
from drivedistill.recipes.base import MethodUse, Recipe, Stage, StageContext


def test_the_three_recipes_declare_registered_methods_and_unique_stages() -> None:
    found = all_recipes()
    assert set(found) >= {"vlm_ad", "latent_vla", "evodrive"}
    methods = set(registry.names("method"))
    stages = [s.name for r in found.values() for s in r.stages]
    assert len(stages) == len(set(stages))
    for recipe in found.values():
        for use in recipe.methods:
            assert use.method in methods
            assert use.baseline is None or use.baseline in methods
    assert baseline_row(ModelSpec(student="vla", method="evodrive")) == "vla/vla_sft"
    assert baseline_row(ModelSpec(student="transfuser", method="vlm_ad")) == "transfuser/imitation"
    assert baseline_row(ModelSpec(student="transfuser", method="imitation")) is None
    assert recipe_of("imitation") is None


def test_recipe_sections_are_typed_and_strict() -> None:
    cfg = load_study("smoke")
    assert cfg.recipe("evodrive").perception.steps == 10  # the preset's value, typed
    assert cfg.recipe("latent_vla").lam_train.lr == pytest.approx(1e-3)  # the recipe's own default
    with pytest.raises(ConfigError, match="Did you mean 'probe_after'"):
        load_study("smoke", overrides=["--recipes.evodrive.probe_aftr=false"])
    with pytest.raises(ConfigError, match="Did you mean 'evodrive'"):
        load_study("smoke", overrides=["--recipes.evodrve.seed=1"])
    with pytest.raises(ConfigError, match="recipes.latent_vla.teacher_init"):
        load_study("smoke", overrides=["--recipes.latent_vla.teacher_init=random"])


def test_row_options_are_limited_to_what_a_recipe_allows() -> None:
    rows = "[{student: transfuser, method: imitation}, {student: transfuser, method: latent_vla}, "
    ok = (
        rows
        + "{name: transfuser/latent_vla-untrained, student: transfuser, method: latent_vla, "
        + ("recipe_cfg: {teacher_init: untrained}, controls: transfuser/latent_vla}]")
    )
    cfg = load_study("smoke", overrides=[f"--models={ok}"])
    assert cfg.models[-1].controls == "transfuser/latent_vla"
    bad = rows + "{name: x/y, student: transfuser, method: latent_vla, recipe_cfg: {lam: {}}}]"
    with pytest.raises(ConfigError, match="cannot differ per row"):
        load_study("smoke", overrides=[f"--models={bad}"])
    dangling = rows + "{name: x/y, student: transfuser, method: imitation, controls: nobody/here}]"
    with pytest.raises(ConfigError, match="no row named 'nobody/here'"):
        load_study("smoke", overrides=[f"--models={dangling}"])


def test_the_pipeline_names_no_recipe() -> None:
    """No identifier or string in pipeline/*.py code (docstrings and comments aside) names a recipe,
    one of its methods or one of its stages."""
    names = set()
    for recipe in all_recipes().values():
        names |= {recipe.name, *(m.method for m in recipe.methods), *(s.name for s in recipe.stages)}
    root = Path(pipeline_recipes.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef)
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            text = None
            if isinstance(node, ast.Name):
                text = node.id
            elif (
                isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            ):
                text = node.value
            if text is not None:
                hits = [n for n in names if re.search(rf"(?<![A-Za-z0-9_]){n}(?![A-Za-z0-9_])", text)]
                assert not hits, f"{path.name} names {hits} in {text!r}"


# ---- a toy fourth recipe: two stages, the second reads a row option ----


@dataclass
class ToyConfig:
    width: int = 3
    flavour: str = "plain"  # a row option: only stage toy_b reads it


def _toy_a(cfg: ToyConfig, ctx: StageContext) -> Artifact:
    def run(d: Path) -> dict[str, Any]:
        return {"seed": ctx.seed, "width": cfg.width}

    return ctx.run({"width": cfg.width}, [ctx.store], run)


def _toy_b(cfg: ToyConfig, ctx: StageContext) -> Artifact:
    a = ctx.prior["toy_a"]

    def run(d: Path) -> dict[str, Any]:
        return {"from": a.key, "flavour": cfg.flavour, "artifacts": {"toy/teacher": "."}}

    return ctx.run({"flavour": cfg.flavour}, [ctx.store, a], run)


@pytest.fixture
def toy() -> Iterator[None]:
    @registry.register("recipe", "toy", ToyConfig)
    def build(cfg: ToyConfig) -> Recipe:
        return Recipe(
            "toy",
            stages=(Stage("toy_a", _toy_a), Stage("toy_b", _toy_b, needs=("toy_a",))),
            methods=(MethodUse("toy_method", needs=("toy_b",)),),
            row_options=("flavour",),
        )

    all_recipes.cache_clear()
    try:
        yield
    finally:
        registry._REGISTRY["recipe"].pop("toy")
        all_recipes.cache_clear()


def _study(teachers: str) -> StudyConfig:
    return StudyConfig(
        seeds=[0, 1],
        teachers=teachers,  # type: ignore[arg-type]
        models=[
            ModelSpec(student="s", method="toy_method"),
            ModelSpec(
                name="s/toy_method-c", student="s", method="toy_method", recipe_cfg={"flavour": "salty"}
            ),
        ],
    )


@pytest.mark.parametrize("teachers", ["once", "per_seed"])
def test_a_fourth_recipe_runs_per_seed_and_shares_unchanged_stages(
    toy: None, teachers: str, tmp_path: Path
) -> None:
    cfg = _study(teachers)
    runner = StageRunner(tmp_path, log=lambda _: None)
    store = runner.run("collect", {}, [], lambda d: {"store": "store"})
    stages = RecipeStages(runner, cfg, store)
    got = {(m.name, seed): stages.for_model(m, seed) for m in cfg.models for seed in cfg.seeds}
    plain, control = cfg.models
    per_seed = teachers == "per_seed"
    for seed in cfg.seeds:
        (la, a), (lb, b) = got[(plain.name, seed)]
        (ca, a2), (cb, b2) = got[(control.name, seed)]
        assert a2.path == a.path and ca == la  # toy_a does not read the option: one directory
        assert b2.path != b.path and cb == f"{lb}~{pipeline_recipes.variant_label(control)}"
        assert json.loads((b2.path / "_done.json").read_text())["summary"]["flavour"] == "salty"
        assert a.summary["seed"] == (seed if per_seed else None)
        assert la == (f"toy_a-s{seed}" if per_seed else "toy_a")
    dirs = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "stages").iterdir())
    teachers_made = len(cfg.seeds) if per_seed else 1
    assert len(dirs) == 3 * teachers_made + 1  # per teacher: toy_a, toy_b, the control's toy_b; + collect
    # the scheduler's static view names the same stages (the control's toy_a under its own label)
    needs = static_needs(cfg)
    assert (
        needs[plain.name]
        == [label for seed in cfg.seeds for label, _ in got[(plain.name, seed)]][: len(needs[plain.name])]
    )
    # every stage records where it ran
    record = json.loads(next((tmp_path / "stages").glob("toy_a*/_done.json")).read_text())
    assert {"cpu_model", "torch_threads", "torch", "device"} <= set(record["hardware"])
