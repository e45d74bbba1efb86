"""Config validation at load time: ranges, finiteness, paths — the error names field, value and range."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drivedistill.config import ConfigError, check, from_dict, load_config, validate
from drivedistill.train.loop import TrainConfig


@dataclass
class Inner:
    size: int = field(default=4, metadata=check(ge=1))
    dims: tuple[int, ...] = field(default=(8, 8), metadata=check(ge=1))


@dataclass
class Outer:
    rate: float = field(default=0.1, metadata=check(gt=0, lt=1))
    scale: float = 1.0  # no declared range: only finiteness
    weights: str = field(default="", metadata=check(exists=True))
    inner: Inner = field(default_factory=Inner)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--rate=0"], "rate=0.0: must be in (0, 1)"),
        (["--rate=2"], "rate=2.0: must be in (0, 1)"),
        (["--rate=nan"], "rate=nan: must be a finite number, in (0, 1)"),
        (["--scale=inf"], "scale=inf: must be a finite number"),
        (["--inner.size=-3"], "inner.size=-3: must be >= 1"),
        (["--inner.dims=[8,0]"], "inner.dims[1]=0: must be >= 1"),
        (["--inner.size=abc"], "inner.size: expected int"),
        (["--weights=/no/such/file.safetensors"], "weights='/no/such/file.safetensors': no such file"),
    ],
)
def test_bad_values_name_the_dotted_field_value_and_range(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(Outer, overrides=overrides)
    assert message in str(err.value)


def test_good_values_and_existing_paths_pass(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"x")
    cfg = load_config(
        Outer, {"rate": 0.5, "weights": str(tmp_path / "w.bin")}, overrides=["--inner.dims=[1,2]"]
    )
    assert cfg.rate == 0.5 and cfg.inner.dims == (1, 2)


def test_validate_checks_a_config_built_in_code() -> None:
    cfg = Outer()
    cfg.inner.size = 0
    with pytest.raises(ConfigError, match=r"^cfg\.inner\.size=0: must be >= 1$"):
        validate(cfg, "cfg")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lr", -0.001, "train.lr=-0.001: must be > 0"),
        ("lr", 0, "train.lr=0.0: must be > 0"),
        ("weight_decay", -1, "train.weight_decay=-1.0: must be >= 0"),
        ("batch_size", -2, "train.batch_size=-2: must be >= 1"),
        ("warmup", 1.5, "train.warmup=1.5: must be in [0, 1)"),
    ],
)
def test_train_config_ranges(key: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(TrainConfig, {key: value}, "train")
    assert str(err.value) == message


def test_study_and_student_fields_are_checked() -> None:
    from drivedistill import registry
    from drivedistill.pipeline.config import StudyConfig

    with pytest.raises(ConfigError, match=r"val_fraction=2\.0: must be in \(0, 1\)"):
        from_dict(StudyConfig, {"val_fraction": 2})
    with pytest.raises(ConfigError, match=r"eval\.max_scenes=-1: must be >= 0"):
        from_dict(StudyConfig, {"eval": {"max_scenes": -1}})
    cls = registry.get("student", "transfuser").config_cls
    assert cls is not None
    with pytest.raises(ConfigError, match=r"student\.hidden_dim=-8: must be >= 1"):
        from_dict(cls, {"hidden_dim": -8}, "student")


def test_dry_run_rejects_a_negative_lr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from drivedistill.cli import main

    code = main(["run", "--preset", "smoke", "--out", str(tmp_path / "r"), "--dry-run", "--train.lr=-0.001"])
    err = capsys.readouterr().err
    assert code == 2
    assert "train.lr=-0.001: must be > 0" in err
    assert "Traceback" not in err
