"""Contract tests generated from the student registry: every registered student, default config.

forward → PlanOutput (B, 8, 3) + "plan_query" (B, D) + "scene_tokens" (B, N, D), finite; backward of
its default method's loss reaches every trainable parameter; save → load gives identical outputs;
it runs on a batch whose privileged part is removed and its forward accepts only an AgentInputBatch.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing

import numpy as np
import pytest
import torch

from drivedistill import registry
from drivedistill.methods.base import MethodContext
from drivedistill.models.students.base import Student
from drivedistill.testing import random_batch
from drivedistill.train import checkpoint
from drivedistill.types import NUM_FUTURE, AgentInputBatch, Batch, PlanOutput

STUDENTS = [e.name for e in registry.entries("student")]
PERCEPTION = [n for n in STUDENTS if hasattr(registry.get("student", n).default_config(), "bev_channels")]
BEV_CHANNELS = 3  # random_scene's BEV raster


def _config(name: str, **changes: object) -> object:
    cfg = registry.get("student", name).default_config()
    if getattr(cfg, "bev_channels", None) == 0:
        changes = {"bev_channels": BEV_CHANNELS, **changes}
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _student(name: str, **changes: object) -> Student:
    torch.manual_seed(0)
    return registry.build("student", name, _config(name, **changes))


@pytest.fixture(scope="module")
def batch() -> Batch:
    return random_batch(batch_size=2, seed=3)


def test_registry_has_the_four_students() -> None:
    assert {"constant_velocity", "ego_mlp", "transfuser", "ipad"} <= set(STUDENTS)


@pytest.mark.parametrize("name", STUDENTS)
def test_forward_outputs(name: str, batch: Batch) -> None:
    student = _student(name)
    out = student(batch.inputs)
    assert isinstance(out, PlanOutput)
    assert out.trajectory.shape == (2, NUM_FUTURE, 3)
    assert torch.isfinite(out.trajectory).all()
    q, tokens = out.features["plan_query"], out.features["scene_tokens"]
    assert q.shape == (2, student.feature_dim), (
        f"plan_query {tuple(q.shape)} vs feature_dim {student.feature_dim}"
    )
    assert tokens.ndim == 3 and tokens.shape[0] == 2 and tokens.shape[2] == student.feature_dim
    for key, value in out.features.items():
        assert torch.isfinite(value).all(), f"feature {key} is not finite"


@pytest.mark.parametrize("name", STUDENTS)
def test_backward_reaches_every_parameter(name: str, batch: Batch) -> None:
    student = _student(name)
    method = registry.build("method", student.default_method, student=student, context=MethodContext())
    losses = method.losses(batch)
    assert torch.isfinite(losses["loss"]), losses
    trainable = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    if not trainable:
        # parameter-free students (constant_velocity): the gradient contract is vacuous; say so explicitly
        assert sum(p.numel() for p in student.parameters()) == 0
        assert not losses["loss"].requires_grad
        return
    losses["loss"].backward()
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    bad = [n for n, p in trainable if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad}"
    assert any(bool(p.grad.abs().sum() > 0) for _, p in trainable if p.grad is not None)


@pytest.mark.parametrize("name", STUDENTS)
def test_save_load_identical_outputs(name: str, batch: Batch, tmp_path: object) -> None:
    student = _student(name).eval()
    # change the weights away from the seeded init so that loading (not re-seeding) is what is tested
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    cfg = _config(name)
    run = checkpoint.save_checkpoint(
        tmp_path,  # type: ignore[arg-type]
        step=1,
        model=student,
        config={"student": dataclasses.asdict(cfg)},  # type: ignore[call-overload]
        meta={"student": name},
    )
    loaded = checkpoint.load_student(run)
    assert type(loaded) is type(student)
    with torch.no_grad():
        a, b = student(batch.inputs), loaded(batch.inputs)
    assert torch.equal(a.trajectory, b.trajectory)
    for key in a.features:
        assert torch.equal(a.features[key], b.features[key]), key


@pytest.mark.parametrize("name", STUDENTS)
def test_privileged_part_is_not_needed(name: str) -> None:
    forward = type(_student(name)).forward
    params = list(inspect.signature(forward).parameters)
    assert params == ["self", "inputs"], f"{name}.forward must take only `inputs`, got {params}"
    hints = typing.get_type_hints(forward)
    assert hints["inputs"] is AgentInputBatch, f"{name}.forward(inputs) must be annotated AgentInputBatch"
    stripped = random_batch(batch_size=2, seed=4, with_privileged=False)
    assert stripped.privileged is None
    out = _student(name).eval()(stripped.inputs)
    assert torch.isfinite(out.trajectory).all()


@pytest.mark.parametrize("name", PERCEPTION)
def test_without_ego_status_ignores_it(name: str, batch: Batch) -> None:
    student = _student(name, use_ego_status=False).eval()
    shifted = dataclasses.replace(
        batch.inputs, ego_status=batch.inputs.ego_status + 5.0, ego_history=batch.inputs.ego_history * 2
    )
    with torch.no_grad():
        a, b = student(batch.inputs).trajectory, student(shifted).trajectory
    assert torch.equal(a, b)
    with_status = _student(name).eval()
    with torch.no_grad():
        assert not torch.equal(with_status(batch.inputs).trajectory, with_status(shifted).trajectory)


def test_constant_velocity_follows_an_arc() -> None:
    from drivedistill.models.students.constant_velocity import arc_trajectory

    speed, yaw_rate = torch.tensor([10.0, 10.0]), torch.tensor([0.0, 0.5])
    traj = arc_trajectory(speed, yaw_rate)
    t = torch.arange(1, NUM_FUTURE + 1) * 0.5
    assert torch.allclose(traj[0, :, 0], 10.0 * t) and torch.equal(traj[0, :, 1:], torch.zeros(NUM_FUTURE, 2))
    radius = 10.0 / 0.5  # the arc is a circle of radius v/ω centred at (0, R)
    dist = torch.hypot(traj[1, :, 0], traj[1, :, 1] - radius)
    assert torch.allclose(dist, torch.full_like(dist, radius), atol=1e-4)
    assert torch.allclose(traj[1, :, 2], 0.5 * t)


def test_constant_velocity_from_history_matches_status() -> None:
    b = random_batch(batch_size=2, seed=5)  # random_scene: straight history at the status speed
    from_status = _student("constant_velocity")(b.inputs).trajectory
    from_history = _student("constant_velocity", source="history")(b.inputs).trajectory
    assert torch.allclose(from_status, from_history, atol=1e-4)


def test_transfuser_starts_at_the_constant_velocity_prior() -> None:
    """cv_prior: an untrained TransFuser plans the constant-speed line (zero residual), or the
    constant-velocity arc with cv_prior_turns; without ego status the prior is off."""
    batch = random_batch(batch_size=2, seed=3)
    batch.inputs.ego_status[:, 2] = torch.tensor([0.0, 0.3])  # one sample turning
    cv = _student("constant_velocity")(batch.inputs).trajectory
    straight = batch.inputs.ego_status[:, :1] * torch.arange(1, NUM_FUTURE + 1) * 0.5  # (B, 8) x
    with torch.no_grad():
        plan = _student("transfuser").eval()(batch.inputs).trajectory
        torch.testing.assert_close(plan[..., 0], straight)
        assert torch.equal(plan[..., 1:], torch.zeros_like(plan[..., 1:]))
        torch.testing.assert_close(
            _student("transfuser", cv_prior_turns=True).eval()(batch.inputs).trajectory, cv
        )
        assert not _student("transfuser", use_ego_status=False).prior
        assert not _student("transfuser", cv_prior=False).eval()(batch.inputs).trajectory.allclose(cv)


def test_checkpoint_written_before_a_field_existed_keeps_its_behaviour() -> None:
    from drivedistill.train.checkpoint import student_config

    saved = {"hidden_dim": 64, "num_heads": 4, "bev_channels": 3}  # a config written before cv_prior
    old = student_config({"student": "transfuser"}, {"student": saved})
    assert old.cv_prior is False and old.cv_prior_turns is True and old.use_ego_history is True
    now = student_config({"student": "transfuser"}, {"student": {**saved, "cv_prior": True}})
    assert now.cv_prior is True
    assert student_config({"student": "ego_mlp"}, {"student": {}}).use_ego_status is True  # no such fields


@pytest.mark.parametrize("name", ["transfuser", "ipad"])
def test_without_ego_history_ignores_past_poses(name: str, batch: Batch) -> None:
    moved = dataclasses.replace(batch.inputs, ego_history=batch.inputs.ego_history * 2 + 1.0)
    with torch.no_grad():
        for history, same in ((False, True), (True, False)):
            student = _student(name, use_ego_history=history, cv_prior=False).eval()
            a, b = student(batch.inputs).trajectory, student(moved).trajectory
            assert torch.equal(a, b) is same


def test_labelled_bev_is_privileged_and_students_get_only_the_lidar() -> None:
    """The labelled BEV (lanes, drivable area, vehicle boxes) lives in `Privileged` / `PrivilegedBatch`
    only: no field of the student's input carries it, stripping the privileged part removes it, and a
    student's plan does not change when it changes."""
    from drivedistill.data.dataset import collate
    from drivedistill.testing import random_scene
    from drivedistill.types import AgentInput

    assert [f.name for f in dataclasses.fields(AgentInput)] == [
        "camera",
        "bev",
        "ego_history",
        "ego_status",
        "command",
    ]
    assert [f.name for f in dataclasses.fields(AgentInputBatch)] == [
        "camera",
        "bev",
        "ego_history",
        "ego_status",
        "command",
    ]
    scenes = [random_scene(i) for i in range(2)]
    for s in scenes:
        assert s.privileged is not None and s.privileged.labelled_bev is not None
        assert not any(
            np.shares_memory(getattr(s.agent_input, f.name), s.privileged.labelled_bev)
            for f in dataclasses.fields(AgentInput)
            if isinstance(getattr(s.agent_input, f.name), np.ndarray)
        )
        assert s.without_privileged().privileged is None
    full = collate(scenes)
    assert full.privileged is not None and full.privileged.labelled_bev is not None
    assert collate([s.without_privileged() for s in scenes]).privileged is None
    for name in PERCEPTION:
        student = _student(name).eval()
        flipped = [
            dataclasses.replace(
                s,
                privileged=dataclasses.replace(s.privileged, labelled_bev=255 - s.privileged.labelled_bev),  # type: ignore[arg-type, operator, union-attr]
            )
            for s in scenes
        ]
        with torch.no_grad():
            a = student(collate(scenes).inputs).trajectory
            b = student(collate(flipped).inputs).trajectory
        assert torch.equal(a, b), f"{name}: the plan depends on the labelled BEV"


def test_world_students_input_is_the_lidar_histogram() -> None:
    """In the default world the students' `bev` is the 2-channel LiDAR histogram, not the labelled raster:
    on a collected sample the labelled raster's drivable area covers much of the grid while the LiDAR
    (ground removed) returns on a small fraction of cells."""
    from drivedistill.world.bev import BevConfig
    from drivedistill.world.camera import CameraConfig
    from drivedistill.world.config import WorldConfig
    from drivedistill.world.episode import run_episode
    from drivedistill.world.lidar import LIDAR_CHANNELS

    cfg = WorldConfig(
        scenarios=["intersection"],
        num_episodes=1,
        episode_seconds=7.0,
        camera=CameraConfig(height=32, width=64),
        bev=BevConfig(height=64, width=64, resolution=1.0),
    )
    scene = run_episode(cfg, 0).scenes[0]
    ai, pv = scene.agent_input, scene.privileged
    assert pv is not None and pv.labelled_bev is not None
    assert ai.bev.shape == (64, 64, len(LIDAR_CHANNELS)) and pv.labelled_bev.shape == (64, 64, 3)
    drivable = (pv.labelled_bev[..., 0] > 0).mean()
    returns = (ai.bev.max(-1) > 0).mean()
    assert drivable > 0.15 and 0.0 < returns < 0.5 * drivable
