"""`WorldConfig`: everything that defines the embedded default world's data (scenarios, traffic, events,
sensors, episode length, seed). Validated on construction; every message names the field and the fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drivedistill.config import check, to_dict
from drivedistill.world.bev import BevConfig
from drivedistill.world.camera import CameraConfig
from drivedistill.world.lidar import LidarConfig

# Bump when the world's code records something else with an unchanged WorldConfig (expert driving,
# sensors, metric-scene surfaces), so `drivedistill run` re-collects instead of reusing a cached store.
# 2: the expert slows for bends and respects a grip bound; drivable polygons include lane seams.
# 3: traffic never reverses; the expert keeps 4 m to crossing cars, passes stopped cars slowly in bends and
#    accelerates / brakes within nuPlan's comfort bounds unless in an emergency.
# 4: samples record `meta["event_onset_s"]` (when their event starts relative to t0).
# 5: cut-in gaps a driver closes within comfort; a merging car without a gap stops before its lane ends;
#    the expert predicts lane-changing cars with their heading held and brakes ≤ 3 m/s² above 12 m/s.
# 6: junction fillets meet the lane strips (they stopped 5 cm short); the edges the ego drove along are on
#    its route.
# 7: after a hand-over to a lane that does not line up (roundabout entries), the expert pursues the new
#    lane's centre instead of turning onto it at full lock.
# 8: the fillets no longer fill the roundabout's island (a 5 cm band round it had); the hand-over pursuit steers
#    and releases on the direction of travel; an edge the ego drove along is on route only where no route
#    lane held the ego.
# 9: the route centreline follows connected lanes (a roundabout entry continues on the ring's outer lane, not
#    the inner one 7.7 m away); the ring edges its straight joins cross at entries and exits are on route.
# 10: the route (centreline, command) starts from the ego's lane on its route, not highway-env's closest lane
#     (the straight-on edge at a stop line before a turn, the ring edge before the route's past an entry).
WORLD_CODE_VERSION = 10

SCENARIOS = ("highway", "merge", "roundabout", "intersection", "racetrack")
SCRIPTED_EVENTS = ("lead_brake", "stop_and_go", "cut_in", "stopped_vehicle", "cross_traffic")
SIM_HZ = 10  # simulation and expert control rate [Hz]
HISTORY_S, FUTURE_S = 2.0, 4.0  # [s] needed before / after every sample
# Index of the first dedicated validation episode (`WorldConfig.val_episodes`): far from any training
# index, and a multiple of 60 so val episode k plays scenarios[k % len(scenarios)] for up to 6 scenarios.
VAL_EPISODE_BASE = 1_000_020


def _default_density() -> dict[str, float]:
    return {name: 1.0 for name in SCENARIOS}


def _default_events() -> dict[str, float]:
    return {
        "lead_brake": 0.25,
        "stop_and_go": 0.15,
        "cut_in": 0.25,
        "stopped_vehicle": 0.2,
        "cross_traffic": 0.6,
    }


@dataclass
class PerturbConfig:
    """Recovery data (DART, Laskey et al. 2017; ChauffeurNet, Bansal et al. 2018): with probability `prob`
    a *training* episode's expert is pushed off its path once — from a random time after the 2 s history
    it holds its steering for `seconds` plus a yaw-rate offset that would carry it `offset_m` sideways
    (random side, × U(0.5, 1)) — and then steers back by itself. Samples whose 4 s future overlaps the push
    are dropped (their label would teach the push); samples after it show an ego off its lane in their
    sensors and history and the expert's recovery as their label (`meta["recovery_s"]`: seconds since the
    push ended). Validation episodes are never perturbed. prob 0 (the default) leaves the data as it was."""

    prob: float = field(default=0.0, metadata=check(ge=0, le=1))
    offset_m: float = field(default=1.5, metadata=check(gt=0, le=4))  # [m] sideways within `seconds`
    seconds: float = field(default=1.0, metadata=check(gt=0, le=3))  # [s] duration of the push


@dataclass
class WorldConfig:
    """The default world.

    scenarios        families used round robin over episodes (episode i → scenarios[i % len])
    num_episodes     episodes a collection runs (the training split when val_episodes > 0)
    val_episodes     > 0: that many more episodes (indices VAL_EPISODE_BASE + k, round robin over the
                     scenarios, so every scenario gets its share) are the validation split and all
                     num_episodes are training; 0: the store's hash split (a `val_fraction` of the
                     num_episodes, at random — 5 of 50 in one seed, unbalanced over scenarios and events)
    episode_seconds  simulated time per episode [s]; samples every 0.5 s from 2 s to the end minus 4 s
    density          traffic density multiplier per scenario (1 = default, 0 = only scripted vehicles)
    event_probs      per-episode probability of each scripted event, among those the scenario supports
                     (at most one per episode: probabilities of a scenario's events are renormalised if
                     they sum above 1); "cross_traffic" adds a timed crossing vehicle at junctions
    camera, bev      camera and BEV grid (size, resolution) configs (world/camera.py, world/bev.py); the
                     BEV grid is shared by the students' LiDAR histogram and the privileged labelled BEV
    lidar            beam pattern and noise of the LiDAR (world/lidar.py)
    seed             base seed; episode i is seeded from (seed, i) and is reproducible on its own
    perturb          recovery data: training episodes whose expert is pushed off its path once
                     (`PerturbConfig`; off by default)
    """

    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    num_episodes: int = field(default=20, metadata=check(ge=1))
    val_episodes: int = field(default=0, metadata=check(ge=0))
    episode_seconds: float = field(default=14.0, metadata=check(gt=0))
    density: dict[str, float] = field(default_factory=_default_density, metadata=check(ge=0))
    event_probs: dict[str, float] = field(default_factory=_default_events, metadata=check(ge=0, le=1))
    camera: CameraConfig = field(default_factory=CameraConfig)
    bev: BevConfig = field(default_factory=BevConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    seed: int = field(default=0, metadata=check(ge=0))
    perturb: PerturbConfig = field(default_factory=PerturbConfig)

    def __post_init__(self) -> None:
        if not self.scenarios:
            raise ValueError(f"WorldConfig.scenarios: give at least one of {list(SCENARIOS)}")
        for name in self.scenarios:
            if name not in SCENARIOS:
                raise ValueError(
                    f"WorldConfig.scenarios: unknown scenario '{name}'; choose from {list(SCENARIOS)}"
                )
        if self.num_episodes < 1:
            raise ValueError(f"WorldConfig.num_episodes: must be ≥ 1, got {self.num_episodes}")
        if self.num_episodes > VAL_EPISODE_BASE:
            raise ValueError(f"WorldConfig.num_episodes: at most {VAL_EPISODE_BASE}, got {self.num_episodes}")
        if self.val_episodes < 0:
            raise ValueError(
                f"WorldConfig.val_episodes: must be ≥ 0 (0 = hash split), got {self.val_episodes}"
            )
        min_len = HISTORY_S + FUTURE_S
        if self.episode_seconds < min_len or self.episode_seconds > 120:
            raise ValueError(
                f"WorldConfig.episode_seconds: must be in [{min_len}, 120] s (2 s history + 4 s future), "
                f"got {self.episode_seconds}"
            )
        if abs(self.episode_seconds * 2 - round(self.episode_seconds * 2)) > 1e-9:
            raise ValueError(
                f"WorldConfig.episode_seconds: must be a multiple of 0.5 s, got {self.episode_seconds}"
            )
        for name, d in self.density.items():
            if name not in SCENARIOS:
                raise ValueError(
                    f"WorldConfig.density: unknown scenario '{name}'; keys are {list(SCENARIOS)}"
                )
            if not 0.0 <= d <= 3.0:
                raise ValueError(f"WorldConfig.density.{name}: must be in [0, 3], got {d}")
        for name, p in self.event_probs.items():
            if name not in SCRIPTED_EVENTS:
                raise ValueError(
                    f"WorldConfig.event_probs: unknown event '{name}'; keys are {list(SCRIPTED_EVENTS)}"
                )
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"WorldConfig.event_probs.{name}: must be a probability in [0, 1], got {p}")

    def data_key(self) -> dict[str, Any]:
        """The config as a collection's cache key: `to_dict` without the fields that leave the data as
        it was (`perturb` while its prob is 0), so that adding an option does not re-collect old runs."""
        out: dict[str, Any] = to_dict(self)
        if self.perturb.prob == 0:
            out.pop("perturb")
        return out

    def episode_indices(self) -> list[int]:
        """Every episode a collection runs: 0 .. num_episodes − 1, then the dedicated val episodes."""
        return list(range(self.num_episodes)) + [VAL_EPISODE_BASE + k for k in range(self.val_episodes)]

    def split_of(self, index: int) -> str | None:
        """ "val" / "train" for episode `index` when val_episodes > 0; None: the store's hash split."""
        if self.val_episodes == 0:
            return None
        return "val" if index >= VAL_EPISODE_BASE else "train"

    def density_of(self, scenario: str) -> float:
        return float(self.density.get(scenario, 1.0))

    @property
    def num_steps(self) -> int:
        """Simulation steps per episode (at SIM_HZ)."""
        return round(self.episode_seconds * SIM_HZ)
