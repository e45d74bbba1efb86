"""Core data types and the privilege boundary.

Geometry convention everywhere (unless a name says otherwise): poses are in the **current ego frame**
at time t = 0 — x forward, y left, yaw counter-clockwise — in metres and radians. Time steps are 0.5 s.

- `AgentInput`  what a deployable planner may see at time t (camera, LiDAR BEV, past ego, command).
- `Privileged`  what only teachers, targets, annotators and metrics may read (the future, the map, the
                labelled BEV raster, the event label, ...).
- `Scene`       both, plus bookkeeping; one sample of a data set.
- `AgentInputBatch` / `PrivilegedBatch` / `Batch`   the collated torch tensors of the same split.
- `Trajectory`  a plan or a ground-truth path, (T, 3) poses at a fixed step.
- `PlanOutput`  what every student returns.

Every type validates itself on construction (shape, dtype, finiteness); a failure names the field and
the shape it expected. numpy types do not import torch: metrics and data tools run without it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

# ----- constants of the time grid ------------------------------------------------------------------
DT = 0.5  # [s] step of plans, history and sensors (2 Hz)
NUM_PAST = 4  # past ego poses at t = -2.0, -1.5, -1.0, -0.5 s
NUM_FUTURE = 8  # future poses at t = 0.5 ... 4.0 s (NAVSIM horizon); the first 6 are nuScenes' 3 s
FUTURE_FRAME_STEPS = (2, 4, 6)  # future camera frames at +1, +2, +3 s (indices on the 0.5 s grid)
NUM_AGENT_STEPS = NUM_FUTURE + 1  # agent boxes at t = 0, 0.5, ..., 4.0 s
EGO_STATUS_FIELDS = ("speed", "acceleration", "yaw_rate")  # [m/s, m/s^2, rad/s], longitudinal
AGENT_FIELDS = ("x", "y", "yaw", "length", "width", "vx", "vy", "class")  # ego frame; class = AgentClass


class Command(enum.IntEnum):
    """High-level driving command (nuScenes/NAVSIM convention: derived from the route)."""

    LEFT = 0
    STRAIGHT = 1
    RIGHT = 2
    UNKNOWN = 3


class AgentClass(enum.IntEnum):
    """Object classes of agent boxes. STATIC objects count ½ in PDMS NC."""

    VEHICLE = 0
    PEDESTRIAN = 1
    BICYCLE = 2
    STATIC = 3


class ValidationError(ValueError):
    """A typed field has the wrong shape, dtype or non-finite values."""


def _check_array(
    owner: str,
    name: str,
    value: Any,
    shape: tuple[int | None, ...],
    kinds: str,
    finite: bool = True,
) -> None:
    """Check `value` is an ndarray of `shape` (None = any size) and dtype kind in `kinds` ("f", "u", "b", "i")."""
    expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
    if not isinstance(value, np.ndarray):
        raise ValidationError(
            f"{owner}.{name}: expected a numpy array of shape {expected}, got {type(value).__name__}"
        )
    if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
        raise ValidationError(f"{owner}.{name}: expected shape {expected}, got {tuple(value.shape)}")
    if value.dtype.kind not in kinds:
        raise ValidationError(f"{owner}.{name}: expected dtype kind in {kinds!r}, got {value.dtype}")
    if finite and value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ValidationError(f"{owner}.{name}: contains NaN or Inf")


@dataclass
class Trajectory:
    """Poses (T, 3): x, y, yaw [m, m, rad] at t = dt, 2·dt, ... in the frame named by `frame`."""

    poses: np.ndarray
    dt: float = DT
    frame: str = "ego"  # "ego" (current ego frame, x fwd / y left), "rear_axle" (NAVSIM) or "global"

    def __post_init__(self) -> None:
        _check_array("Trajectory", "poses", self.poses, (None, 3), "f")
        if self.dt <= 0:
            raise ValidationError(f"Trajectory.dt: must be > 0, got {self.dt}")

    @property
    def xy(self) -> np.ndarray:
        return self.poses[:, :2]

    def horizon(self, num_steps: int) -> Trajectory:
        return Trajectory(self.poses[:num_steps], self.dt, self.frame)


@dataclass
class AgentInput:
    """What a deployable planner sees at time t (one sample).

    camera        (H, W, 3) uint8   front camera at t, RGB
    bev           (Hb, Wb, C) uint8 ego-centred LiDAR BEV at t: a point-height histogram (world world:
                                    C = 2, world/lidar.py; no labels, no map), x forward = up. The
                                    labelled BEV (lanes, drivable area, boxes) is `Privileged.labelled_bev`
    ego_history   (NUM_PAST, 3) f32 past poses at t = -2.0 ... -0.5 s, current ego frame [m, m, rad]
    ego_status    (3,) f32          speed [m/s], longitudinal acceleration [m/s^2], yaw rate [rad/s]
    command       int               Command
    """

    camera: np.ndarray
    bev: np.ndarray
    ego_history: np.ndarray
    ego_status: np.ndarray
    command: int

    def __post_init__(self) -> None:
        _check_array("AgentInput", "camera", self.camera, (None, None, 3), "u")
        _check_array("AgentInput", "bev", self.bev, (None, None, None), "u")
        _check_array("AgentInput", "ego_history", self.ego_history, (NUM_PAST, 3), "f")
        _check_array("AgentInput", "ego_status", self.ego_status, (len(EGO_STATUS_FIELDS),), "f")
        if int(self.command) not in {c.value for c in Command}:
            raise ValidationError(
                f"AgentInput.command: expected one of {[c.name for c in Command]}, got {self.command}"
            )


@dataclass
class MapGeometry:
    """Map around the ego in the current ego frame [m]. Lists hold (K_i, 2) float arrays.

    lanes               centerlines (P_i, 2)
    lane_polygons       lane surfaces (Q_i, 2), same order as `lanes`
    lane_on_route       (L,) bool, whether lane i is on the route
    drivable_polygons   road surface polygons (union = drivable area)
    intersection_polygons  junction areas (empty on highways)
    route               (R, 2) route centerline ahead of (and a little behind) the ego
    """

    lanes: list[np.ndarray]
    lane_polygons: list[np.ndarray]
    lane_on_route: np.ndarray
    drivable_polygons: list[np.ndarray]
    intersection_polygons: list[np.ndarray]
    route: np.ndarray

    def __post_init__(self) -> None:
        for name in ("lanes", "lane_polygons", "drivable_polygons", "intersection_polygons"):
            for i, arr in enumerate(getattr(self, name)):
                _check_array("MapGeometry", f"{name}[{i}]", arr, (None, 2), "f")
        if len(self.lane_polygons) != len(self.lanes):
            raise ValidationError(
                f"MapGeometry.lane_polygons: expected {len(self.lanes)} polygons (one per lane), got {len(self.lane_polygons)}"
            )
        _check_array("MapGeometry", "lane_on_route", self.lane_on_route, (len(self.lanes),), "b")
        _check_array("MapGeometry", "route", self.route, (None, 2), "f")


@dataclass
class Privileged:
    """What only teachers, targets, annotators and metrics may read (one sample).

    future_trajectory   (NUM_FUTURE, 3) f32  expert poses at t = 0.5 ... 4.0 s, current ego frame
    future_valid        (NUM_FUTURE,) bool   False where the episode ended before that step
    future_frames       (3, H, W, 3) uint8   front camera at +1, +2, +3 s (the EvoDriveVLA oracle's input)
    future_ego_status   (NUM_FUTURE, 3) f32  ego status (EGO_STATUS_FIELDS) at 0.5 ... 4.0 s
    agents              (NUM_AGENT_STEPS, A, 8) f32  boxes at t = 0 ... 4 s, AGENT_FIELDS, current ego frame;
                        index a is the same track at every step
    agents_valid        (NUM_AGENT_STEPS, A) bool
    map                 MapGeometry
    scenario            scenario family name ("highway", "merge", ...)
    labelled_bev        (Hb, Wb, 3) uint8 or None  labelled BEV raster at t (drivable area, lane markings,
                        vehicle boxes; world/bev.py) on the grid of `AgentInput.bev`; None for sources
                        without one
    event               event family of the sample (world/events.py EVENT_FAMILIES), "" when unknown
    """

    future_trajectory: np.ndarray
    future_valid: np.ndarray
    future_frames: np.ndarray
    future_ego_status: np.ndarray
    agents: np.ndarray
    agents_valid: np.ndarray
    map: MapGeometry
    scenario: str
    labelled_bev: np.ndarray | None = None
    event: str = ""

    def __post_init__(self) -> None:
        if self.labelled_bev is not None:
            _check_array("Privileged", "labelled_bev", self.labelled_bev, (None, None, 3), "u")
        _check_array("Privileged", "future_trajectory", self.future_trajectory, (NUM_FUTURE, 3), "f")
        _check_array("Privileged", "future_valid", self.future_valid, (NUM_FUTURE,), "b")
        _check_array(
            "Privileged", "future_frames", self.future_frames, (len(FUTURE_FRAME_STEPS), None, None, 3), "u"
        )
        _check_array("Privileged", "future_ego_status", self.future_ego_status, (NUM_FUTURE, 3), "f")
        _check_array("Privileged", "agents", self.agents, (NUM_AGENT_STEPS, None, len(AGENT_FIELDS)), "f")
        _check_array(
            "Privileged", "agents_valid", self.agents_valid, (NUM_AGENT_STEPS, self.agents.shape[1]), "b"
        )


@dataclass
class Scene:
    """One sample: `token` (unique id), the agent input, the privileged part and bookkeeping.

    `privileged` is None when a sample is handed to something that must not see it.
    """

    token: str
    episode: str
    frame_index: int
    agent_input: AgentInput
    privileged: Privileged | None
    meta: dict[str, Any] = field(default_factory=dict)

    def without_privileged(self) -> Scene:
        return Scene(self.token, self.episode, self.frame_index, self.agent_input, None, dict(self.meta))


# ----- collated torch tensors ----------------------------------------------------------------------


def _check_tensor(owner: str, name: str, value: Any, shape: tuple[int | None, ...], float_: bool) -> None:
    import torch

    expected = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
    if not isinstance(value, torch.Tensor):
        raise ValidationError(
            f"{owner}.{name}: expected a torch.Tensor of shape {expected}, got {type(value).__name__}"
        )
    if value.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape)):
        raise ValidationError(f"{owner}.{name}: expected shape {expected}, got {tuple(value.shape)}")
    if float_ and not value.is_floating_point():
        raise ValidationError(f"{owner}.{name}: expected a floating tensor, got {value.dtype}")


@dataclass
class AgentInputBatch:
    """Collated `AgentInput`s. The only thing a student's forward() receives.

    camera        (B, 3, H, W) float in [0, 1]
    bev           (B, C, Hb, Wb) float in [0, 1]
    ego_history   (B, NUM_PAST, 3)  current ego frame [m, m, rad]
    ego_status    (B, 3)            speed, acceleration, yaw rate
    command       (B,) long         Command
    """

    camera: torch.Tensor
    bev: torch.Tensor
    ego_history: torch.Tensor
    ego_status: torch.Tensor
    command: torch.Tensor

    def __post_init__(self) -> None:
        _check_tensor("AgentInputBatch", "camera", self.camera, (None, 3, None, None), True)
        b = self.camera.shape[0]
        _check_tensor("AgentInputBatch", "bev", self.bev, (b, None, None, None), True)
        _check_tensor("AgentInputBatch", "ego_history", self.ego_history, (b, NUM_PAST, 3), True)
        _check_tensor("AgentInputBatch", "ego_status", self.ego_status, (b, 3), True)
        _check_tensor("AgentInputBatch", "command", self.command, (b,), False)

    @property
    def batch_size(self) -> int:
        return int(self.camera.shape[0])

    def to(self, device: torch.device | str) -> AgentInputBatch:
        return AgentInputBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class PrivilegedBatch:
    """Collated `Privileged` tensors (targets and teacher inputs).

    trajectory        (B, NUM_FUTURE, 3)  expert future poses
    valid             (B, NUM_FUTURE) bool
    future_frames     (B, 3, 3, H, W) float in [0, 1]  front camera at +1/+2/+3 s
    future_ego_status (B, NUM_FUTURE, 3)
    labelled_bev      (B, 3, Hb, Wb) float in [0, 1] or None  labelled BEV raster (drivable, markings,
                      vehicles) — what teachers and probes may read instead of the students' LiDAR
    """

    trajectory: torch.Tensor
    valid: torch.Tensor
    future_frames: torch.Tensor
    future_ego_status: torch.Tensor
    labelled_bev: torch.Tensor | None = None

    def __post_init__(self) -> None:
        b = self.trajectory.shape[0]
        _check_tensor("PrivilegedBatch", "trajectory", self.trajectory, (b, NUM_FUTURE, 3), True)
        _check_tensor("PrivilegedBatch", "valid", self.valid, (b, NUM_FUTURE), False)
        _check_tensor("PrivilegedBatch", "future_frames", self.future_frames, (b, 3, 3, None, None), True)
        _check_tensor(
            "PrivilegedBatch", "future_ego_status", self.future_ego_status, (b, NUM_FUTURE, 3), True
        )
        if self.labelled_bev is not None:
            _check_tensor("PrivilegedBatch", "labelled_bev", self.labelled_bev, (b, 3, None, None), True)

    def to(self, device: torch.device | str) -> PrivilegedBatch:
        moved: dict[str, Any] = {
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
            for f in fields(self)
        }
        return PrivilegedBatch(**moved)


@dataclass
class Batch:
    """A training/evaluation batch: the agent input, the privileged part, and per-method extras.

    `extras` carries cached method targets keyed by name (e.g. "vlm_ad/text_emb" (B, 3, E),
    "latent/ego_codes" (B, T) long). `tokens` are the sample tokens, for error messages and caches.
    """

    tokens: list[str]
    inputs: AgentInputBatch
    privileged: PrivilegedBatch | None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            list(self.tokens),
            self.inputs.to(device),
            None if self.privileged is None else self.privileged.to(device),
            {k: v.to(device) for k, v in self.extras.items()},
        )

    def require_privileged(self, who: str) -> PrivilegedBatch:
        if self.privileged is None:
            raise ValidationError(f"{who} needs the privileged part of the batch, but it was removed")
        return self.privileged


@dataclass
class PlanOutput:
    """What every student returns.

    trajectory  (B, NUM_FUTURE, 3) planned poses at 0.5 ... 4.0 s, current ego frame [m, m, rad]
    features    named intermediate tensors methods may hook; every student provides at least
                "plan_query" (B, D) and "scene_tokens" (B, N, D). Others are student-specific
                (e.g. iPad's "proposals" (B, K, 8, 3) and "proposal_scores" (B, K)).
    """

    trajectory: torch.Tensor
    features: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = self.trajectory.shape[0]
        _check_tensor("PlanOutput", "trajectory", self.trajectory, (b, NUM_FUTURE, 3), True)
