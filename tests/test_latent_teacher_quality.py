"""LatentVLA teacher gate: fails an untrained teacher, passes one trained on a fixture where the codes
can only be known from the image, and its parts (image-free baseline, blank image, decoding) behave."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from drivedistill import registry
from drivedistill.data.dataset import collate
from drivedistill.methods.latent_vla_quality import (
    decode_codes,
    image_free_accuracy,
    latent_teacher_quality,
    trajectory_ade,
)
from drivedistill.models.latent_action import LatentActionConfig, LatentActionModel
from drivedistill.models.latent_action.encode import EGO_CODES_KEY
from drivedistill.models.teachers.vlm import VLMTeacher, VLMTeacherConfig
from drivedistill.models.vlm import VLMConfig
from drivedistill.testing import random_scene
from drivedistill.types import NUM_FUTURE, Batch, Scene

TINY_VLM = VLMConfig(
    image_hw=(64, 128),
    hidden_size=64,
    intermediate_size=128,
    vision_hidden_size=32,
    vision_intermediate_size=64,
)
COLOURS = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230], [128, 128, 128]], np.uint8)
SPEEDS = (4.0, 8.0, 12.0, 16.0)  # [m/s] the future of class c drives straight at SPEEDS[c]


class _Fixture:
    """Scenes whose camera is one flat colour c ∈ {0..3}; all 12 codes are c, the future drives at
    SPEEDS[c]; speed, acceleration, yaw rate and command are the same for every sample, so without the
    image the first code is a guess (image-free teacher-forced accuracy ≈ 11/12 + 1/48 ≈ 0.94)."""

    def __init__(self, n: int) -> None:
        self.scenes: list[Scene] = []
        self.codes: dict[str, np.ndarray] = {}
        for i in range(n):
            c = i % 4
            base = random_scene(i, camera_hw=(64, 128))
            assert base.privileged is not None
            t = np.arange(1, NUM_FUTURE + 1) * 0.5
            fut = np.stack([SPEEDS[c] * t, np.zeros_like(t), np.zeros_like(t)], -1).astype(np.float32)
            camera = np.broadcast_to(COLOURS[c], base.agent_input.camera.shape).copy()
            ai = dataclasses.replace(
                base.agent_input, camera=camera, ego_status=np.array([10.0, 0.0, 0.0], np.float32), command=0
            )
            priv = dataclasses.replace(
                base.privileged, future_trajectory=fut, future_valid=np.ones(NUM_FUTURE, bool)
            )
            scene = dataclasses.replace(base, token=f"fx{i}", agent_input=ai, privileged=priv)
            self.scenes.append(scene)
            self.codes[scene.token] = np.full(12, c, np.int64)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> Scene:
        return self.scenes[i]

    def collate(self, scenes: Sequence[Scene]) -> Batch:
        return collate(scenes, {EGO_CODES_KEY: self.codes})


def _teacher() -> VLMTeacher:
    torch.manual_seed(0)
    return registry.build("teacher", "vlm", VLMTeacherConfig(vlm=TINY_VLM))  # type: ignore[no-any-return]


def _lam(data: _Fixture) -> LatentActionModel:
    """A LAM whose trajectory decoder alone is fitted to the fixture (codes → futures)."""
    torch.manual_seed(0)
    lam = LatentActionModel(LatentActionConfig(dim=32, heads=2, encoder_layers=1, decoder_layers=1))
    lam.set_stage("ego")
    batch = data.collate(data.scenes)
    assert batch.privileged is not None and lam.traj_decoder is not None
    opt = torch.optim.Adam(lam.traj_decoder.parameters(), lr=3e-3)
    z = lam.ego_vq.embed(batch.extras[EGO_CODES_KEY].view(-1, 3, 4))
    state = lam._state(batch.inputs.ego_status, z)
    for _ in range(300):
        loss = (lam._decode_z(z, state) - batch.privileged.trajectory).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lam.eval()


@pytest.fixture(scope="module")
def fixture() -> tuple[_Fixture, _Fixture, LatentActionModel]:
    train, val = _Fixture(16), _Fixture(8)
    return train, val, _lam(train)


def test_lam_decoder_recovers_the_fixture_futures(fixture) -> None:  # type: ignore[no-untyped-def]
    _train, val, lam = fixture
    codes = np.stack([val.codes[s.token] for s in val.scenes])
    futs = np.stack([s.privileged.future_trajectory for s in val.scenes])
    status = np.stack([s.agent_input.ego_status for s in val.scenes])
    assert (
        trajectory_ade(decode_codes(lam, codes, status), futs) < 1.0
    )  # classes are 2 m/s · t apart (≥ 1.25 m ADE)


def test_image_free_baseline_learns_the_code_statistics_only() -> None:
    rng = np.random.default_rng(0)
    first = rng.integers(0, 4, 64)
    codes = np.repeat(first[:, None], 12, 1)  # the first code decides the rest
    status, cmd = np.zeros((64, 3), np.float32), np.zeros(64, np.int64)
    acc = image_free_accuracy(codes[:48], status[:48], cmd[:48], codes[48:], status[48:], cmd[48:], 16)
    assert 0.85 < acc < 0.99  # every code after the first is right, the first is a guess
    noise = rng.integers(0, 16, (64, 12))
    acc_noise = image_free_accuracy(noise[:48], status[:48], cmd[:48], noise[48:], status[48:], cmd[48:], 16)
    assert acc_noise < 0.25  # nothing to learn from i.i.d. codes


@pytest.mark.slow
def test_gate_fails_untrained_and_passes_trained_teacher(fixture) -> None:  # type: ignore[no-untyped-def]
    train, val, lam = fixture
    futs = np.stack([s.privileged.future_trajectory for s in val.scenes])
    mean_ade = trajectory_ade(np.broadcast_to(futs.mean(0), futs.shape), futs)  # a "student" at chance
    teacher = _teacher()
    weak = latent_teacher_quality(teacher, lam, train, val, student_ade_m=mean_ade)
    assert not weak["pass"] and "beats_image_free" in weak["failed"]
    assert weak["code_accuracy"] < 0.5
    batch = train.collate(train.scenes)
    opt = torch.optim.AdamW(teacher.parameters(), lr=5e-3)
    for _ in range(60):
        loss = teacher.losses(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    strong = latent_teacher_quality(teacher, lam, train, val, student_ade_m=mean_ade)
    assert strong["pass"], strong
    assert strong["code_accuracy"] >= 0.99
    assert strong["code_accuracy"] - strong["blank_image_accuracy"] > 0.04
    assert strong["decoded_ade_m"] < 0.5 * mean_ade
    assert strong["train_samples"] == 16 and strong["val_samples"] == 8


def test_lam_trajectory_decoder_trains_in_the_ego_stage_only() -> None:
    from drivedistill.testing import random_batch

    torch.manual_seed(0)
    lam = LatentActionModel(LatentActionConfig(dim=32, heads=2, encoder_layers=1, decoder_layers=1))
    batch = random_batch(2, camera_hw=(64, 128))
    assert "traj" not in lam.losses(batch)  # env stage: no ego codes yet
    lam.set_stage("ego")
    out = lam.losses(batch)
    out["loss"].backward()
    assert float(out["traj"]) > 0
    assert lam.traj_decoder is not None and lam.traj_decoder[0].weight.grad is not None
    assert lam.decode_trajectory(torch.zeros(3, 12, dtype=torch.long), torch.zeros(3, 3)).shape == (
        3,
        NUM_FUTURE,
        3,
    )
    with pytest.raises(ValueError, match="ego_status"):  # state_cond: the decoder needs the current status
        lam.decode_trajectory(torch.zeros(3, 12, dtype=torch.long))
    off = LatentActionModel(
        LatentActionConfig(dim=32, heads=2, encoder_layers=1, decoder_layers=1, traj_weight=0)
    )
    with pytest.raises(RuntimeError, match="traj_weight"):
        off.decode_trajectory(torch.zeros(1, 12, dtype=torch.long))
