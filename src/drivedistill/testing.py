"""Synthetic samples and batches for tests and benchmarks (random but valid; seeded).

These are not a data source: they exist so that models, metrics and stores can be tested without
collecting a world. Shapes follow `drivedistill.types`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from drivedistill.types import (
    AGENT_FIELDS,
    FUTURE_FRAME_STEPS,
    NUM_AGENT_STEPS,
    NUM_FUTURE,
    NUM_PAST,
    AgentInput,
    MapGeometry,
    Privileged,
    Scene,
)

if TYPE_CHECKING:
    from drivedistill.types import Batch


def random_scene(
    seed: int = 0,
    camera_hw: tuple[int, int] = (64, 128),
    bev_hw: tuple[int, int] = (64, 64),
    bev_channels: int = 3,
    num_agents: int = 4,
    token: str | None = None,
    episode: str = "ep0",
) -> Scene:
    """A straight two-lane road, the ego driving forward at ~10 m/s, a few agents ahead."""
    rng = np.random.default_rng(seed)
    speed = float(rng.uniform(5, 15))
    t_fut = np.arange(1, NUM_FUTURE + 1, dtype=np.float32) * 0.5
    t_past = -np.arange(NUM_PAST, 0, -1, dtype=np.float32) * 0.5
    fut = np.stack([speed * t_fut, rng.normal(0, 0.1) * t_fut, np.zeros_like(t_fut)], -1).astype(np.float32)
    past = np.stack([speed * t_past, np.zeros_like(t_past), np.zeros_like(t_past)], -1).astype(np.float32)
    agents = np.zeros((NUM_AGENT_STEPS, num_agents, len(AGENT_FIELDS)), np.float32)
    for a in range(num_agents):
        # agents ahead, never slower than the ego: the GT plan is collision-free by construction
        x0, y0, v = rng.uniform(15, 45), rng.choice([0.0, 4.0]), rng.uniform(speed, speed + 5)
        ts = np.arange(NUM_AGENT_STEPS) * 0.5
        agents[:, a] = np.stack(
            [x0 + v * ts, np.full_like(ts, y0), 0 * ts, 5 + 0 * ts, 2 + 0 * ts, v + 0 * ts, 0 * ts, 0 * ts],
            -1,
        )
    road = np.array([[-60, -2], [100, -2], [100, 6], [-60, 6]], np.float32)
    lanes = [np.array([[-60, 0], [100, 0]], np.float32), np.array([[-60, 4], [100, 4]], np.float32)]
    lane_polys = [
        np.array([[-60, -2], [100, -2], [100, 2], [-60, 2]], np.float32),
        np.array([[-60, 2], [100, 2], [100, 6], [-60, 6]], np.float32),
    ]
    h, w = camera_hw
    priv = Privileged(
        future_trajectory=fut,
        future_valid=np.ones(NUM_FUTURE, bool),
        future_frames=rng.integers(0, 255, (len(FUTURE_FRAME_STEPS), h, w, 3), dtype=np.uint8),
        future_ego_status=np.tile(np.array([speed, 0, 0], np.float32), (NUM_FUTURE, 1)),
        agents=agents,
        agents_valid=np.ones((NUM_AGENT_STEPS, num_agents), bool),
        map=MapGeometry(lanes, lane_polys, np.array([True, False]), [road], [], lanes[0].copy()),
        scenario="highway",
    )
    ai = AgentInput(
        camera=rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
        bev=rng.integers(0, 255, (*bev_hw, bev_channels), dtype=np.uint8),
        ego_history=past,
        ego_status=np.array([speed, 0.0, 0.0], np.float32),
        command=int(rng.integers(0, 3)),
    )
    priv.labelled_bev = rng.integers(0, 2, (*bev_hw, 3), dtype=np.uint8) * 255  # drawn last: seeds keep
    priv.event = "lane_follow"
    return Scene(token or f"{episode}-{seed:05d}", episode, seed, ai, priv, {"scenario": "highway"})


def random_batch(batch_size: int = 2, seed: int = 0, with_privileged: bool = True, **kwargs: object) -> Batch:
    """A collated batch of `random_scene`s (torch tensors)."""
    from drivedistill.data.dataset import collate

    scenes = [random_scene(seed * 1000 + i, **kwargs) for i in range(batch_size)]  # type: ignore[arg-type]
    batch = collate(scenes)
    if not with_privileged:
        batch.privileged = None
    return batch
