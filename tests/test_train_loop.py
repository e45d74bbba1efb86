"""The training loop: exact resume, NaN detection, generic models, config guards, lr schedule, DDP."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from drivedistill.config import ConfigError
from drivedistill.data.dataset import collate
from drivedistill.testing import random_scene
from drivedistill.train import checkpoint
from drivedistill.train.config import resolve_run
from drivedistill.train.loop import TrainConfig, fit, lr_factor
from drivedistill.train.run import train_student
from drivedistill.types import Scene

FAST = ["--train.batch_size=4", "--train.progress=false", "--train.log_every=1", "--train.num_workers=0"]


def _scenes(n: int = 12) -> list[Scene]:
    return [random_scene(i, camera_hw=(32, 64), bev_hw=(32, 32)) for i in range(n)]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint.resolve(run) / checkpoint.WEIGHTS))


def test_lr_schedule_warms_up_then_decays() -> None:
    f = [lr_factor(s, 100, 0.1, 0.0) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[10:])) and f[-1] < 0.01


def test_resume_reaches_the_same_weights(tmp_path: Path) -> None:
    """Kill (abort) a run mid-epoch after a checkpoint, resume it: weights equal an uninterrupted run."""
    # dropout on: the RNG state must be restored too; 3 steps per epoch, a checkpoint every 2 steps
    args = [*FAST, "--train.epochs=3", "--train.checkpoint_every=2", "--student.dropout=0.2"]
    scenes = _scenes()
    full = train_student(resolve_run("ego_mlp", overrides=args), scenes, tmp_path / "full", collate=collate)
    assert full.step == 9
    cut = train_student(
        resolve_run("ego_mlp", overrides=args), scenes, tmp_path / "cut", collate=collate, abort_after_step=5
    )
    assert cut.step == 5 and checkpoint.read_meta(tmp_path / "cut")["step"] == 4  # mid-epoch 2
    resumed = train_student(
        resolve_run("ego_mlp", overrides=args), scenes, tmp_path / "cut", collate=collate, resume=True
    )
    assert resumed.step == 9
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    # and training changed them (the comparison is not vacuous)
    first = load_file(str(tmp_path / "full" / "checkpoints" / "step_000008" / checkpoint.WEIGHTS))
    assert not all(torch.equal(a[k], first[k]) for k in a)


def test_existing_run_and_changed_config_are_refused(tmp_path: Path) -> None:
    args = [*FAST, "--train.epochs=1"]
    train_student(resolve_run("ego_mlp", overrides=args), _scenes(), tmp_path, collate=collate)
    with pytest.raises(FileExistsError, match="--resume"):
        train_student(resolve_run("ego_mlp", overrides=args), _scenes(), tmp_path, collate=collate)
    with pytest.raises(ConfigError, match="student"):
        spec = resolve_run("ego_mlp", overrides=[*args, "--student.hidden_dim=32"])
        train_student(spec, _scenes(), tmp_path, collate=collate, resume=True)
    with pytest.raises(FileNotFoundError, match="drop --resume"):
        train_student(
            resolve_run("ego_mlp", overrides=args), _scenes(), tmp_path / "new", collate=collate, resume=True
        )


@dataclass
class ToyBatch:
    """A batch that is not a drivedistill Batch: the loop needs only `.to` and `.tokens`."""

    x: torch.Tensor
    tokens: list[str] = field(default_factory=list)

    def to(self, device: str) -> ToyBatch:
        return ToyBatch(self.x.to(device), self.tokens)


class Toy(nn.Module):
    """Regress x → 2x; returns NaN from `nan_at` calls on, to test the check."""

    def __init__(self, nan_at: int = 0) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.teacher = nn.Linear(3, 3)  # frozen: not optimised, not saved
        self.calls, self.nan_at = 0, nan_at

    def frozen(self) -> list[nn.Module]:
        return [self.teacher]

    def losses(self, batch: ToyBatch) -> dict[str, torch.Tensor]:
        self.calls += 1
        err = (self.lin(batch.x) - 2 * batch.x).pow(2).mean() + 0 * self.teacher(batch.x).sum()
        if self.nan_at and self.calls >= self.nan_at:
            err = err * float("nan")
        return {"loss": err, "mse": err.detach()}


def _toy_data(n: int = 8) -> list[ToyBatch]:
    g = torch.Generator().manual_seed(0)
    return [ToyBatch(torch.randn(4, 3, generator=g), [f"tok{i}-{j}" for j in range(4)]) for i in range(n)]


def test_generic_module_with_prebatched_data(tmp_path: Path) -> None:
    model = Toy()
    teacher_before = model.teacher.weight.clone()
    cfg = TrainConfig(epochs=30, lr=3e-2, warmup=0.0, progress=False, log_every=4)
    result = fit(model, _toy_data(), cfg, tmp_path, meta={"name": "toy"})  # type: ignore[arg-type]
    assert result.step == 240 and result.losses["mse"] < 0.05
    assert torch.equal(model.teacher.weight, teacher_before)
    saved = _weights(tmp_path)
    assert set(saved) == {"lin.weight", "lin.bias"}
    assert checkpoint.read_meta(tmp_path)["name"] == "toy"
    assert (tmp_path / "tensorboard").is_dir()


def test_non_finite_loss_names_step_tokens_and_part(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, progress=False, log_every=3, seed=1)
    with pytest.raises(FloatingPointError, match=r"step 5: part 'loss'.*tok\d-"):
        fit(Toy(nan_at=5), _toy_data(), cfg, tmp_path)  # type: ignore[arg-type]


def test_parameter_free_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no trainable parameters"):
        train_student(resolve_run("constant_velocity", overrides=FAST), _scenes(), tmp_path, collate=collate)


def test_cpu_fp16_autocast_is_refused(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=1, progress=False, precision="fp16", device="cpu")
    with pytest.raises(ConfigError, match="needs a GPU"):
        fit(Toy(), _toy_data(), cfg, tmp_path)  # type: ignore[arg-type]


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    from drivedistill.data.dataset import collate
    from drivedistill.testing import random_scene
    from drivedistill.train.config import resolve_run
    from drivedistill.train.run import train_student
    from drivedistill.train.checkpoint import trainable_state
    from drivedistill.train import run as run_module

    out = sys.argv[1]
    scenes = [random_scene(i, camera_hw=(32, 64), bev_hw=(32, 32)) for i in range(16)]
    spec = resolve_run("ego_mlp", overrides=["--train.batch_size=2", "--train.epochs=2", "--train.progress=false",
                                              "--train.log_every=2", "--student.dropout=0.1"])
    built = {}
    original = run_module.build_method
    def capture(spec, context=None):
        built["m"] = original(spec, context)
        return built["m"]
    run_module.build_method = capture
    result = train_student(spec, scenes, out, collate=collate)
    torch.save(trainable_state(built["m"]), os.path.join(out, f"rank{os.environ['RANK']}.pt"))
    print("steps", result.step)
    """
)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_end_identical(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # so that a hang can be ended with the workers, by this group only
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("steps 8") == 2  # 16 samples / 2 ranks / batch 2 = 4 steps per epoch, 2 epochs
    a = torch.load(out / "rank0.pt", weights_only=True)
    b = torch.load(out / "rank1.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a), "ranks ended with different weights"
    saved = _weights(out)
    assert all(torch.equal(saved[k], a[k]) for k in saved)  # rank 0 wrote the checkpoint
    assert checkpoint.read_meta(out)["world_size"] == 2


def test_resume_accepts_a_config_written_before_a_field_existed(tmp_path: Path) -> None:
    """A checkpoint whose student section predates `cv_prior_turns` / `use_ego_history` resumes under
    the same behaviour (their legacy values) and is refused under another (today's default prior)."""
    import yaml

    args = [*FAST, "--train.epochs=1", "--student.hidden_dim=32", "--student.cv_prior_turns=true"]
    tiny = [*args, "--student.num_fusion_layers=1", "--student.num_decoder_layers=1"]
    train_student(resolve_run("transfuser", overrides=tiny), _scenes(8), tmp_path, collate=collate)
    for cfg_file in tmp_path.glob("checkpoints/step_*/config.yaml"):  # as an older writer left it
        saved = yaml.safe_load(cfg_file.read_text())
        del saved["student"]["cv_prior_turns"], saved["student"]["use_ego_history"]
        cfg_file.write_text(yaml.safe_dump(saved))
    train_student(
        resolve_run("transfuser", overrides=tiny), _scenes(8), tmp_path, collate=collate, resume=True
    )
    today = [a for a in tiny if "cv_prior_turns" not in a]
    with pytest.raises(ConfigError, match="student"):
        train_student(
            resolve_run("transfuser", overrides=today), _scenes(8), tmp_path, collate=collate, resume=True
        )
