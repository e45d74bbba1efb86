"""Checkpoint faults (#21 6a, 6e, 6g): an interrupted first save, a truncated checkpoint, a full disk,
file modes. The toy model and data come from test_train_loop."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from drivedistill.cli import error_line
from drivedistill.train import checkpoint
from drivedistill.train.loop import TrainConfig, fit
from drivedistill.utils import io
from tests.test_train_loop import Toy, _toy_data


def _cfg(**kw: object) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "lr": 1e-2, "warmup": 0.0, "progress": False, "log_every": 4, **kw})  # type: ignore[arg-type]


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_interrupted_first_save_is_cleaned_up_and_the_stage_reruns(tmp_path: Path) -> None:
    # a kill during the first checkpoint save: only the temporary directory exists, no latest.json
    partial = tmp_path / "checkpoints" / ".step_000008.tmp"
    partial.mkdir(parents=True)
    (partial / checkpoint.WEIGHTS).write_bytes(b"\x00" * 10)
    # the pipeline passes resume=True whenever checkpoints/ is non-empty
    result = fit(Toy(), _toy_data(), _cfg(), tmp_path, resume=True)
    assert result.step == 16 and not partial.exists()
    assert checkpoint.read_meta(tmp_path)["step"] == 16
    # with nothing at all to resume, --resume is still refused
    with pytest.raises(FileNotFoundError, match="drop --resume"):
        fit(Toy(), _toy_data(), _cfg(), tmp_path / "empty", resume=True)


def test_truncated_weights_name_the_path_and_resume_falls_back(tmp_path: Path) -> None:
    fit(Toy(), _toy_data(), _cfg(checkpoint_every=4), tmp_path, abort_after_step=10)  # killed at step 10
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_000004", "step_000008"]
    bad = root / "step_000008" / checkpoint.WEIGHTS
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(checkpoint.CheckpointError, match=str(bad)):
        checkpoint.load_weights(tmp_path, Toy())
    assert checkpoint.resume_point(tmp_path) == root / "step_000004"
    # resume continues from step 4 (not from 0, and without failing on the truncated file)
    result = fit(Toy(), _toy_data(), _cfg(checkpoint_every=4), tmp_path, resume=True)
    assert result.step == 16
    assert checkpoint.read_meta(tmp_path)["step"] == 16


def test_every_checkpoint_truncated_is_a_clear_error(tmp_path: Path) -> None:
    fit(Toy(), _toy_data(), _cfg(epochs=1), tmp_path)
    for w in (tmp_path / "checkpoints").glob("step_*/" + checkpoint.WEIGHTS):
        w.write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint"):
        fit(Toy(), _toy_data(), _cfg(epochs=1), tmp_path, resume=True)


def test_full_disk_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "x.bin"
    with pytest.raises(OSError) as err:
        io.atomic_write_with(target, full)
    assert err.value.errno == errno.ENOSPC and str(target) in str(err.value)
    assert not list(tmp_path.iterdir())  # the temporary file is gone
    line, code = error_line("train", err.value)
    assert code == 2 and "no space left" in line and str(target) in line and "\n" not in line

    # torch.save on a full disk raises a RuntimeError ("unexpected pos ..."), not ENOSPC
    def torch_full(path: Path) -> None:
        path.write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))  # type: ignore[attr-defined]
    with pytest.raises(OSError) as err:
        io.atomic_write_with(target, torch_full)
    assert err.value.errno == errno.ENOSPC and "unexpected pos" in str(err.value)


def test_files_get_the_umask_mode(tmp_path: Path, umask_022: None) -> None:
    final = checkpoint.save_checkpoint(tmp_path, 1, Toy(), {}, {}, state={"step": torch.tensor(1)})
    for name in (checkpoint.WEIGHTS, checkpoint.CONFIG, checkpoint.META, checkpoint.STATE):
        assert (final / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "checkpoints" / checkpoint.LATEST).stat().st_mode & 0o777 == 0o644
