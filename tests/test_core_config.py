"""Config loading: YAML + dotted overrides, strict keys with suggestions, typed conversion, hashing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivedistill.config import (
    ConfigError,
    config_hash,
    from_dict,
    load_config,
    parse_overrides,
    save_resolved,
    to_dict,
)


@dataclass
class Inner:
    num_episodes: int = 4
    scenarios: list[str] = field(default_factory=lambda: ["highway"])
    density: float = 1.0


@dataclass
class Outer:
    world: Inner = field(default_factory=Inner)
    name: str = "x"
    fast: bool = False
    image_hw: tuple[int, int] = (128, 256)


def test_yaml_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("world:\n  num_episodes: 7\n  scenarios: [merge, roundabout]\nname: y\n")
    cfg = load_config(Outer, f, overrides=["--world.num_episodes=20", "--fast=true", "--image_hw=[64,128]"])
    assert cfg.world.num_episodes == 20 and cfg.world.scenarios == ["merge", "roundabout"]
    assert cfg.name == "y" and cfg.fast is True and cfg.image_hw == (64, 128)


def test_unknown_key_suggests() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown config key 'world.num_episode'. Did you mean 'num_episodes'\?"
    ):
        load_config(Outer, overrides=["--world.num_episode=3"])


def test_bad_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match="world.num_episodes: expected int"):
        from_dict(Outer, {"world": {"num_episodes": "many"}})
    with pytest.raises(ConfigError, match="world.num_episodes: expected an integer"):
        from_dict(Outer, {"world": {"num_episodes": 2.5}})
    with pytest.raises(ConfigError, match="fast: expected true/false"):
        from_dict(Outer, {"fast": "maybe"})
    with pytest.raises(ConfigError, match="must look like"):
        parse_overrides(["--world.num_episodes"])


def test_hash_and_resolved_round_trip(tmp_path: Path) -> None:
    a, b = Outer(), Outer(name="z")
    assert config_hash(a) == config_hash(Outer()) != config_hash(b)
    save_resolved(a, tmp_path / "resolved.yaml")
    again = load_config(Outer, tmp_path / "resolved.yaml")
    assert to_dict(again) == to_dict(a)


def test_eval_stage_key_ignores_report_only_fields() -> None:
    from drivedistill.pipeline.config import load_study
    from drivedistill.pipeline.study import eval_key

    cfg = load_study("smoke")
    base = eval_key(cfg)
    cfg.eval.scene_panels += 1  # shapes the report only
    cfg.eval.recipe_references = not cfg.eval.recipe_references  # adds a row, measures no (model, seed)
    assert eval_key(cfg) == base
    cfg.eval.closedloop_episodes += 1
    assert eval_key(cfg) != base


def test_override_into_a_free_form_section_reads_like_yaml() -> None:
    """`--students.transfuser.hidden_dim=128` must equal `hidden_dim: 128` in a file: same config, same
    stage keys (free-form sections have no dataclass field to type the text)."""
    from drivedistill.pipeline.config import load_study

    cfg = load_study(
        "smoke", overrides=["--students.transfuser.hidden_dim=128", "--students.transfuser.cv_prior=false"]
    )
    assert cfg.students["transfuser"]["hidden_dim"] == 128 and cfg.students["transfuser"]["cv_prior"] is False
    cfg = load_study("smoke", overrides=["--students.transfuser.camera_backbone=resnet18"])
    assert cfg.students["transfuser"]["camera_backbone"] == "resnet18"
