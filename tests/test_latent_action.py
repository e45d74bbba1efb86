"""Latent action model: VQ assignment, straight-through gradients, 16 ego codes, dead-code restarts, stages,
where the GT motion may flow (env decoder only; never into env codes or the ego decoder), probe, baselines."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from drivedistill.models.latent_action import (
    LatentActionConfig,
    LatentActionModel,
    VectorQuantizer,
    frame_sequence,
    motion_condition,
    perplexity,
)
from drivedistill.models.latent_action.encode import position_majority_accuracy, probe_trajectory
from drivedistill.models.latent_action.model import change_weights
from drivedistill.testing import random_batch
from drivedistill.types import Batch

SMALL = LatentActionConfig(frame_hw=(16, 32), patch=8, dim=32, heads=2, encoder_layers=1, decoder_layers=1)


def test_vq_assigns_nearest_code() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4)
    z = torch.randn(5, 3, 4)
    brute = torch.cdist(z.reshape(-1, 4), vq.codebook).argmin(1).reshape(5, 3)
    out = vq(z)
    assert torch.equal(out.codes, brute)
    assert torch.allclose(out.z_q, vq.codebook[brute], atol=1e-6)
    vq.codebook[2] = torch.tensor([10.0, 0, 0, 0])
    assert int(vq.assign(torch.tensor([[9.0, 0.1, 0, 0]]))[0]) == 2


def test_vq_straight_through_and_commitment_gradients() -> None:
    vq = VectorQuantizer(4, 3)
    z = torch.randn(6, 3, requires_grad=True)
    out = vq(z)
    (out.z_q * torch.arange(3.0)).sum().backward()
    # straight-through: d(z_q)/dz = identity
    assert z.grad is not None and torch.allclose(z.grad, torch.arange(3.0).expand(6, 3))
    z.grad = None
    vq(z).commitment.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_dead_code_restart_revives_unused_codes() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, decay=0.5, restart_threshold=0.5)
    data = torch.randn(64, 2) * 0.1 + torch.tensor([5.0, 5.0])
    vq.update(data, vq.assign(data))  # seeds the codebook from data
    vq.codebook[3] = torch.tensor([-100.0, -100.0])  # a code nothing is assigned to
    vq.ema_sum[3] = vq.codebook[3]
    total = 0
    for _ in range(6):
        total += int(vq.update(data, vq.assign(data)))
    assert total >= 1
    assert vq.codebook[3].sub(torch.tensor([5.0, 5.0])).norm() < 1.0  # re-seeded next to the data
    assert (vq.codebook - torch.tensor([5.0, 5.0])).norm(dim=1).max() < 1.0


def test_frozen_quantizer_does_not_update() -> None:
    vq = VectorQuantizer(4, 2)
    vq.frozen = True
    before = vq.codebook.clone()
    assert int(vq.update(torch.randn(10, 2), torch.zeros(10, dtype=torch.long))) == 0
    assert torch.equal(before, vq.codebook)


def test_perplexity_bounds() -> None:
    assert float(perplexity(torch.zeros(10, dtype=torch.long), 16)) == pytest.approx(1.0)
    assert float(perplexity(torch.arange(16), 16)) == pytest.approx(16.0, rel=1e-4)


def test_env_stage_gradients_reach_encoder_through_vq() -> None:
    torch.manual_seed(0)
    model = LatentActionModel(SMALL)
    out = model.losses(random_batch(2, camera_hw=(32, 64)))
    out["loss"].backward()
    enc = model.env_encoder
    for name, p in [("patch", enc.patch.proj.weight), ("queries", enc.queries), ("head", enc.head.weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached env_encoder.{name}"
    assert all(p.grad is None for p in model.ego_encoder.parameters())
    assert {"loss", "recon", "commit", "perplexity", "usage", "restarted"} <= set(out)


def test_ego_stage_freezes_env_and_has_16_codes() -> None:
    torch.manual_seed(0)
    model = LatentActionModel(
        LatentActionConfig(frame_hw=(16, 32), dim=32, heads=2, encoder_layers=1, decoder_layers=1)
    )
    assert model.ego_vq.codebook.shape[0] == 16 == model.cfg.ego_codebook_size
    batch = random_batch(3, camera_hw=(32, 64))
    with pytest.raises(RuntimeError, match="set_stage"):
        model.latent_codes(batch)
    model.train()
    model.losses(batch)  # one env step seeds the env codebook
    model.set_stage("ego")
    env_codebook = model.env_vq.codebook.clone()
    assert not model.env_encoder.training and model.ego_encoder.training
    assert not any(p.requires_grad for p in model.env_encoder.parameters())
    out = model.losses(batch)
    out["loss"].backward()
    assert torch.equal(env_codebook, model.env_vq.codebook)
    assert all(p.grad is None for p in model.env_encoder.parameters())
    assert model.ego_encoder.queries.grad is not None and model.ego_encoder.queries.grad.abs().sum() > 0
    env, ego = model.latent_codes(batch)
    assert env.shape == ego.shape == (3, 12)
    assert int(ego.max()) < 16
    with pytest.raises(ValueError, match="frozen"):
        model.set_stage("env")
    # the stage survives a state-dict round trip
    clone = LatentActionModel(model.cfg)
    clone.load_state_dict(model.state_dict())
    assert clone.stage == "ego" and not clone.env_encoder.training


def test_block_causal_mask_hides_future_frames() -> None:
    torch.manual_seed(0)
    model = LatentActionModel(SMALL).eval()
    frames = torch.rand(1, 4, 3, 16, 32)
    base = model.env_encoder(frames)
    changed = frames.clone()
    changed[:, 3] = torch.rand(3, 16, 32)  # only the last frame
    out = model.env_encoder(changed)
    assert torch.allclose(base[:, :2], out[:, :2], atol=1e-5)  # transitions 0→1, 1→2 do not see frame 3
    assert not torch.allclose(base[:, 2], out[:, 2], atol=1e-5)


def test_probe_separates_informative_from_random_codes() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, (400, 2))
    traj = np.zeros((400, 8, 3), np.float32)
    traj[:, :, 0] = (1 + codes[:, :1]) * np.arange(1, 9)[None]  # speed from code 0
    traj[:, :, 1] = (codes[:, 1:] - 1.5) * np.arange(1, 9)[None] * 0.2  # drift from code 1
    good = probe_trajectory(codes[:300], traj[:300], codes[300:], traj[300:], 4, steps=300)
    noise = rng.integers(0, 4, (400, 2))
    bad = probe_trajectory(noise[:300], traj[:300], noise[300:], traj[300:], 4, steps=300)
    assert good.ade < 0.2 * good.mean_baseline_ade
    assert bad.ade > 0.8 * bad.mean_baseline_ade


def _with_other_motion(batch: Batch) -> Batch:
    """The same frames with a different GT trajectory and future ego status."""
    other = copy.deepcopy(batch)
    assert other.privileged is not None
    other.privileged.trajectory = other.privileged.trajectory * 1.7 + 0.3
    other.privileged.future_ego_status = other.privileged.future_ego_status + 2.0
    return other


def test_gt_motion_reaches_env_decoder_but_not_the_codes() -> None:
    """With a frames-only ego IDM, the GT motion enters only the env decoder."""
    torch.manual_seed(0)
    model = LatentActionModel(dataclasses.replace(SMALL, ego_sees_motion=False))
    batch = random_batch(3, camera_hw=(32, 64))
    model.train()
    model.losses(batch)  # seeds the env codebook
    model.eval()
    other = _with_other_motion(batch)
    # env stage: the decoder is told the motion (the recon changes), the env codes are not
    assert not torch.allclose(model.losses(batch)["recon"], model.losses(other)["recon"])
    model.set_stage("ego")
    model.train()
    model.losses(batch)  # seeds the ego codebook
    model.eval()
    env, ego = model.latent_codes(batch)
    env2, ego2 = model.latent_codes(other)
    assert torch.equal(env, env2) and torch.equal(ego, ego2)  # codes come from the frames only
    # ego stage: the decoder does not get the motion, so the reconstruction cannot depend on it
    assert torch.allclose(model.losses(batch)["recon"], model.losses(other)["recon"])


def test_ego_motion_regression_trains_the_ego_encoder() -> None:
    torch.manual_seed(0)
    model = LatentActionModel(SMALL)
    batch = random_batch(2, camera_hw=(32, 64))
    model.losses(batch)
    model.set_stage("ego")
    out = model.losses(batch)
    assert model.ego_motion_head is not None and "motion" in out
    model.zero_grad()
    out["loss"].backward()
    assert model.ego_motion_head.weight.grad is not None
    assert model.ego_encoder.head.weight.grad is not None


def test_ego_sees_motion_makes_ego_codes_trajectory_conditioned() -> None:
    torch.manual_seed(0)
    model = LatentActionModel(dataclasses.replace(SMALL, ego_sees_motion=True))
    batch = random_batch(4, camera_hw=(32, 64))
    model.losses(batch)
    model.set_stage("ego")
    model.losses(batch)  # seeds the ego codebook from encoder outputs
    model.eval()
    z = model.encode(frame_sequence(batch, SMALL.frame_hw), motion_condition(batch)[0], with_ego=True).ego_z
    other = _with_other_motion(batch)
    z2 = model.encode(frame_sequence(other, SMALL.frame_hw), motion_condition(other)[0], with_ego=True).ego_z
    assert z is not None and z2 is not None and not torch.allclose(z, z2)


def test_change_weights_emphasise_changed_pixels() -> None:
    current = torch.zeros(1, 3, 2, 2)
    target = current.clone()
    target[0, :, 0, 0] = 1.0  # one pixel of four changes: d = (1, 0, 0, 0), mean d = 0.25
    w = change_weights(current, target, gain=2.0)
    assert torch.allclose(w[0, 0], torch.tensor([[9.0, 1.0], [1.0, 1.0]]))
    assert torch.equal(change_weights(current, current, gain=2.0), torch.ones(1, 1, 2, 2))


def test_position_majority_accuracy_golden() -> None:
    train = np.array([[1, 2], [1, 3], [0, 3]])
    test = np.array([[1, 3], [0, 3], [1, 2]])
    # majority per position: (1, 3) → hits 2 + 1 (pos 0), 2 (pos 1) → 4 / 6
    assert position_majority_accuracy(train, test) == pytest.approx(4 / 6)


def test_state_cond_reads_the_current_status_in_every_ego_head() -> None:
    """With state_cond the ego FDM, the motion head and the detokenizer read the t = 0 ego status (so the
    codes need not carry it); without it the status reaches none of them."""
    torch.manual_seed(0)
    model = LatentActionModel(SMALL)
    batch = random_batch(2, camera_hw=(32, 64))
    model.losses(batch)
    model.set_stage("ego")
    out = model.losses(batch)
    out["loss"].backward()
    assert model.ego_state_in is not None and model.ego_state_in.weight.grad is not None
    assert float(model.ego_state_in.weight.grad.abs().sum()) > 0  # through the reconstruction
    codes = torch.zeros(2, 12, dtype=torch.long)
    slow, fast = torch.tensor([[2.0, 0, 0]] * 2), torch.tensor([[20.0, 0, 0]] * 2)
    assert not torch.allclose(model.decode_trajectory(codes, slow), model.decode_trajectory(codes, fast))
    off = LatentActionModel(dataclasses.replace(SMALL, state_cond=False))
    assert off.ego_state_in is None
    off.set_stage("ego")
    assert off.decode_trajectory(codes).shape == (2, 8, 3)  # the codes alone


def test_fit_detokenizer_learns_from_frozen_codes_and_touches_nothing_else() -> None:
    """The refit decodes codes + status to futures that depend on both far better than before, is
    deterministic given its seed, and leaves the codebook and every other weight as they were."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, detok_steps=300, detok_code_noise=0.25)
    model = LatentActionModel(cfg)
    model.set_stage("ego")
    model.ego_vq.codebook.copy_(torch.randn_like(model.ego_vq.codebook))
    gen = torch.Generator().manual_seed(1)
    n = 256
    codes = torch.randint(0, 16, (n, 12), generator=gen)
    status = torch.zeros(n, 3)
    status[:, 0] = 5 + 10 * torch.rand(n, generator=gen)  # speed [m/s]
    t = torch.arange(1, 9) * 0.5
    lateral = (codes[:, 0].float() - 7.5) / 4  # the first code sets a lateral drift [m/s]
    fut = torch.stack([status[:, :1] * t, lateral[:, None] * t, torch.zeros(n, 8)], -1)
    valid = torch.ones(n, 8, dtype=torch.bool)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def ade() -> float:
        return float((model.decode_trajectory(codes, status) - fut)[..., :2].norm(dim=-1).mean())

    untrained = ade()
    model.fit_detokenizer(codes, fut, valid, status, seed=3)
    fitted = ade()
    assert fitted < 0.25 * untrained
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("traj_decoder.") for k in changed)
    again = LatentActionModel(cfg)
    again.load_state_dict(before)
    again.fit_detokenizer(codes, fut, valid, status, seed=3)
    assert all(torch.equal(again.state_dict()[k], after[k]) for k in after)
