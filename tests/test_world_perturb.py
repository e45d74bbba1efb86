"""Recovery data (`WorldConfig.perturb`, world/episode.py): a training episode's expert is pushed off its
path once and steers back; samples whose future holds the push are dropped; off by default, and then the
data and its cache key are what they were."""

from __future__ import annotations

import numpy as np
import pytest

from drivedistill.world.config import VAL_EPISODE_BASE, PerturbConfig, WorldConfig
from drivedistill.world.episode import KEY, choose_event, push_schedule, run_episode
from drivedistill.world.scenarios import build_world

PUSHED = WorldConfig(episode_seconds=12.0, perturb=PerturbConfig(prob=1.0, offset_m=1.5, seconds=1.0))


def test_off_by_default_and_out_of_the_cache_key() -> None:
    assert push_schedule(WorldConfig(), 0) is None
    assert "perturb" not in WorldConfig().data_key()  # stores collected before the option keep their key
    assert PUSHED.data_key()["perturb"]["prob"] == 1.0
    assert push_schedule(PUSHED, VAL_EPISODE_BASE) is None  # validation episodes are never pushed
    with pytest.raises(ValueError, match="perturb.prob"):
        from drivedistill.config import from_dict

        from_dict(WorldConfig, {"perturb": {"prob": 1.5}}, "world")


def _lateral(cfg: WorldConfig, index: int, pushed: bool) -> np.ndarray:
    """The ego's lateral offset in its lane at every step of episode `index`, with or without its push."""
    scenario = cfg.scenarios[index % len(cfg.scenarios)]
    rng = np.random.default_rng([cfg.seed, index])
    world = build_world(scenario, rng, cfg.density_of(scenario), choose_event(cfg, scenario, rng))
    push = push_schedule(cfg, index)
    assert push is not None
    out = []
    for step in range(cfg.num_steps):
        if pushed:
            push.apply(world.ego, step)
        world.step()
        out.append(float(world.ego.lane.local_coordinates(world.ego.position)[1]))
    return np.array(out)


def test_the_push_moves_the_expert_off_its_path_and_it_steers_back() -> None:
    """Highway episode 0: the same traffic with and without the push; the ego ends the push ≥ 0.5 m from
    where it would be and is back within half of that 3 s later."""
    push = push_schedule(PUSHED, 0)
    assert push is not None
    shift = _lateral(PUSHED, 0, True) - _lateral(PUSHED, 0, False)
    assert np.abs(shift[: push.start]).max() == 0.0  # nothing differs before the push
    at_end = abs(shift[push.end - 1])
    assert at_end >= 0.5
    assert abs(shift[push.end + 30]) <= 0.5 * at_end


def test_samples_holding_the_push_in_their_future_are_dropped() -> None:
    for index in range(3):  # highway, merge, roundabout
        push = push_schedule(PUSHED, index)
        assert push is not None
        result = run_episode(PUSHED, index)
        assert not result.collided and not result.offroad
        assert result.stats["push_s"] == [push.start / 10, push.end / 10]
        assert result.scenes, "samples after the push remain"
        for scene in result.scenes:
            t0, t_end = scene.frame_index * KEY, (scene.frame_index + 8) * KEY
            assert t0 >= push.end or t_end <= push.start  # the label never holds the push
            assert ("recovery_s" in scene.meta) == (t0 >= push.end)
        recovery = sorted(s.meta["recovery_s"] for s in result.scenes if "recovery_s" in s.meta)
        assert recovery and recovery[0] < 0.5  # the first sample after the push starts within 0.5 s
