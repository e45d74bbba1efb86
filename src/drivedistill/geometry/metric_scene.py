"""MetricScene: the plain-data input of PDMS scoring — one `.npz` file per scene in a directory.

Frame: every pose, polygon and velocity is in one planar **scoring frame** (x, y [m], yaw [rad] CCW),
e.g. the rear-axle frame of the ego at t = 0 (then `ego_pose` = 0) or a city frame. Plans are given
relative to `ego_pose` — the **rear axle** of the ego at t = 0 (NAVSIM convention).

File format (`numpy.savez`, no pickles; strings are numpy unicode arrays):

| key | shape | meaning |
|---|---|---|
| token | () str | unique scene id |
| ego_pose | (3,) | rear-axle pose at t = 0 |
| ego_dynamics | (4,) | speed [m/s], longitudinal acceleration [m/s²], steering angle [rad], yaw rate [rad/s] |
| ego_geometry | (4,) | width, front length, rear length (both from the rear axle), wheelbase [m] |
| agent_times | (K,) | [s] times of the agent samples, from 0 (NAVSIM: 0 … 5 s at 2 Hz) |
| agent_poses | (K, A, 3) | box-centre x, y, yaw |
| agent_velocities | (K, A, 2) | vx, vy in the scoring frame [m/s] |
| agent_sizes | (A, 2) | length, width [m] |
| agent_valid | (K, A) bool | the track is observed at that time |
| agent_types | (A,) int | `drivedistill.types.AgentClass` |
| agent_static | (A,) bool | a static object (cone, bollard, sign, …) |
| agent_ids | (A,) str | track ids |
| {drivable,lane,intersection}_vertices / _offsets | (V, 2) / (P+1,) | polygons, concatenated |
| lane_ids, lane_on_route | (L,) str, (L,) bool | one per lane polygon |
| route | (R, 2) | route centerline through the on-route lanes |
| speed_limit | () | [m/s], NaN when unknown (PDM-Closed then uses 15 m/s) |
| human_future, human_valid | (8, 3), (8,) bool | logged rear-axle poses at 0.5 … 4 s, relative to ego_pose |

Optional keys (NAVSIM v2 / EPDMS; a file without them loads with the defaults, so older files still work):

| key | shape | meaning | default |
|---|---|---|---|
| ego_history_times | (H,) | [s] ≤ 0, increasing: times of the logged past ego states | (0,): no history → HC = 1 |
| ego_history | (H, 7) | x, y, yaw (scoring frame, rear axle), v_lon [m/s], a_lon, a_lat [m/s²], yaw rate [rad/s] | (0, 7) |
| red_light_vertices / _offsets | (V, 2) / (L+1,) | polygons of lanes behind a traffic light (stop areas) | none → TLC = 1 |
| red_light_valid | (K, L) bool | the light of polygon l is red at agent_times[k] (held until the next sample) | all red |
| previous_token | () str | token of the scene 0.5 s earlier in the same log (extended comfort, EC) | "" |
| parent_token | () str | a second-stage (navhard) scene: the first-stage token it follows up | "" (first stage) |
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from drivedistill.types import AgentClass, Scene, ValidationError, _check_array

# Chrysler Pacifica (nuPlan / NAVSIM): width, front length and rear length from the rear axle, wheelbase [m]
PACIFICA = (2.297, 4.049, 1.127, 3.089)
POLYGON_LAYERS = ("drivable", "lane", "intersection", "red_light")
HISTORY_FIELDS = ("x", "y", "yaw", "v_lon", "a_lon", "a_lat", "yaw_rate")
# fields a file may lack (added for NAVSIM v2); they take their dataclass defaults
OPTIONAL_FIELDS = (
    "ego_geometry",
    "speed_limit",
    "ego_history",
    "ego_history_times",
    "red_light_polygons",
    "red_light_valid",
    "previous_token",
    "parent_token",
)


@dataclass
class MetricScene:
    """Everything PDMS needs about one scene. Shapes: see the module docstring."""

    token: str
    ego_pose: np.ndarray
    ego_dynamics: np.ndarray
    agent_times: np.ndarray
    agent_poses: np.ndarray
    agent_velocities: np.ndarray
    agent_sizes: np.ndarray
    agent_valid: np.ndarray
    agent_types: np.ndarray
    agent_static: np.ndarray
    agent_ids: np.ndarray
    drivable_polygons: list[np.ndarray]
    lane_polygons: list[np.ndarray]
    lane_ids: np.ndarray
    lane_on_route: np.ndarray
    intersection_polygons: list[np.ndarray]
    route: np.ndarray
    human_future: np.ndarray
    human_valid: np.ndarray
    ego_geometry: np.ndarray = None  # type: ignore[assignment]  # filled with PACIFICA in __post_init__
    speed_limit: float = float("nan")
    ego_history: np.ndarray = None  # type: ignore[assignment]  # (0, 7) when None
    ego_history_times: np.ndarray = None  # type: ignore[assignment]  # (0,) when None
    red_light_polygons: list[np.ndarray] = field(default_factory=list)
    red_light_valid: np.ndarray = None  # type: ignore[assignment]  # all True (K, L) when None
    previous_token: str = ""
    parent_token: str = ""

    def __post_init__(self) -> None:
        if self.ego_geometry is None:
            self.ego_geometry = np.asarray(PACIFICA, np.float64)
        if self.ego_history is None:
            self.ego_history = np.zeros((0, len(HISTORY_FIELDS)))
        if self.ego_history_times is None:
            self.ego_history_times = np.zeros(0)
        if self.red_light_valid is None:
            self.red_light_valid = np.ones((len(self.agent_times), len(self.red_light_polygons)), bool)
        self.previous_token = str(self.previous_token)
        self.parent_token = str(self.parent_token)
        # ids are strings even when empty (np.array([]) is float)
        self.agent_ids = np.asarray(self.agent_ids, dtype=str)
        self.lane_ids = np.asarray(self.lane_ids, dtype=str)
        own = f"MetricScene[{self.token}]"
        _check_array(own, "ego_pose", self.ego_pose, (3,), "f")
        _check_array(own, "ego_dynamics", self.ego_dynamics, (4,), "f")
        _check_array(own, "ego_geometry", self.ego_geometry, (4,), "f")
        _check_array(own, "agent_times", self.agent_times, (None,), "f")
        k = len(self.agent_times)
        a = self.agent_sizes.shape[0] if isinstance(self.agent_sizes, np.ndarray) else -1
        _check_array(own, "agent_sizes", self.agent_sizes, (a, 2), "f")
        _check_array(own, "agent_poses", self.agent_poses, (k, a, 3), "f", finite=False)
        _check_array(own, "agent_velocities", self.agent_velocities, (k, a, 2), "f", finite=False)
        _check_array(own, "agent_valid", self.agent_valid, (k, a), "b")
        _check_array(own, "agent_types", self.agent_types, (a,), "iu")
        _check_array(own, "agent_static", self.agent_static, (a,), "b")
        _check_array(own, "agent_ids", self.agent_ids, (a,), "U")
        if k == 0 or abs(float(self.agent_times[0])) > 1e-6 or np.any(np.diff(self.agent_times) <= 0):
            raise ValidationError(
                f"{own}.agent_times: must start at 0 s and increase, got {self.agent_times}"
            )
        for name in ("agent_poses", "agent_velocities"):
            arr = getattr(self, name)
            if not np.isfinite(arr[self.agent_valid]).all():
                raise ValidationError(
                    f"{own}.{name}: NaN/Inf at a valid sample; mark it invalid in agent_valid"
                )
        known = {c.value for c in AgentClass}
        if not set(np.unique(self.agent_types).tolist()) <= known:
            raise ValidationError(f"{own}.agent_types: values must be AgentClass {sorted(known)}")
        for layer in POLYGON_LAYERS:
            for i, poly in enumerate(getattr(self, f"{layer}_polygons")):
                _check_array(own, f"{layer}_polygons[{i}]", poly, (None, 2), "f")
                if len(poly) < 3:
                    raise ValidationError(
                        f"{own}.{layer}_polygons[{i}]: a polygon needs ≥ 3 vertices, got {len(poly)}"
                    )
        n_lanes = len(self.lane_polygons)
        _check_array(own, "lane_ids", self.lane_ids, (n_lanes,), "U")
        _check_array(own, "lane_on_route", self.lane_on_route, (n_lanes,), "b")
        if not self.drivable_polygons:
            raise ValidationError(f"{own}.drivable_polygons: empty — PDMS needs the drivable area (DAC)")
        _check_array(own, "route", self.route, (None, 2), "f")
        if len(self.route) < 2:
            raise ValidationError(f"{own}.route: the route centerline needs ≥ 2 points (EP projects on it)")
        _check_array(own, "human_future", self.human_future, (None, 3), "f", finite=False)
        _check_array(own, "human_valid", self.human_valid, (len(self.human_future),), "b")
        _check_array(own, "ego_history_times", self.ego_history_times, (None,), "f")
        h = len(self.ego_history_times)
        _check_array(own, "ego_history", self.ego_history, (h, len(HISTORY_FIELDS)), "f")
        if h and (np.any(np.diff(self.ego_history_times) <= 0) or self.ego_history_times[-1] > 1e-6):
            raise ValidationError(
                f"{own}.ego_history_times: must increase and end at ≤ 0 s, got {self.ego_history_times}"
            )
        _check_array(own, "red_light_valid", self.red_light_valid, (k, len(self.red_light_polygons)), "b")

    # ----- derived ------------------------------------------------------------------------------
    @property
    def width(self) -> float:
        return float(self.ego_geometry[0])

    @property
    def front_length(self) -> float:
        return float(self.ego_geometry[1])

    @property
    def rear_length(self) -> float:
        return float(self.ego_geometry[2])

    @property
    def wheelbase(self) -> float:
        return float(self.ego_geometry[3])

    @property
    def rear_axle_to_center(self) -> float:
        """[m] forward distance from the rear axle to the box centre (1.461 m for the Pacifica)."""
        return 0.5 * (self.front_length - self.rear_length)

    # ----- files --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write `path` (`.npz` appended if missing) atomically."""
        from drivedistill.utils.io import atomic_write_with

        data: dict[str, np.ndarray] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            layer = f.name.removesuffix("_polygons")
            if layer in POLYGON_LAYERS:
                verts = np.concatenate(value) if value else np.zeros((0, 2))
                data[f"{layer}_vertices"] = verts
                data[f"{layer}_offsets"] = np.cumsum([0] + [len(p) for p in value])
            else:
                data[f.name] = np.asarray(value)
        out = Path(path)
        out = out if out.suffix == ".npz" else out.with_name(out.name + ".npz")

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **data)  # type: ignore[arg-type]

        atomic_write_with(out, write)
        return out

    @classmethod
    def load(cls, path: str | Path) -> MetricScene:
        """Read a scene written by `save`; a missing key names the file and the key."""
        p = Path(path)
        with np.load(p, allow_pickle=False) as z:
            kwargs: dict[str, object] = {}
            for f in fields(cls):
                layer = f.name.removesuffix("_polygons")
                try:
                    if layer in POLYGON_LAYERS:
                        verts, offs = z[f"{layer}_vertices"], z[f"{layer}_offsets"]
                        kwargs[f.name] = [verts[offs[i] : offs[i + 1]] for i in range(len(offs) - 1)]
                    elif f.name in ("token", "previous_token", "parent_token"):
                        kwargs[f.name] = str(z[f.name])
                    elif f.name == "speed_limit":
                        kwargs[f.name] = float(z[f.name])
                    else:
                        kwargs[f.name] = z[f.name]
                except KeyError:
                    if f.name in OPTIONAL_FIELDS:
                        continue  # written before the field existed: its default
                    raise ValidationError(
                        f"{p}: missing key for MetricScene.{f.name}; re-export the scene"
                    ) from None
        return cls(**kwargs)  # type: ignore[arg-type]


def save_scenes(scenes: list[MetricScene], directory: str | Path) -> list[Path]:
    """Write one `<token>.npz` per scene into `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return [s.save(d / f"{s.token}.npz") for s in scenes]


def load_scenes(directory: str | Path) -> list[MetricScene]:
    """Every `*.npz` MetricScene of `directory`, sorted by file name."""
    d = Path(directory)
    files = sorted(d.glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"{d}: no MetricScene .npz files; write them with metric_scene.save_scenes")
    return [MetricScene.load(f) for f in files]


def read_scenes(directory: str | Path) -> tuple[list[MetricScene], list[tuple[str, str]]]:
    """Like `load_scenes`, but a file that cannot be read or is malformed is returned as a failure
    (file stem, reason) instead of aborting: scoring counts it as a failed scene."""
    d = Path(directory)
    files = sorted(d.glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"{d}: no MetricScene .npz files; write them with metric_scene.save_scenes")
    scenes: list[MetricScene] = []
    failures: list[tuple[str, str]] = []
    for f in files:
        try:
            scenes.append(MetricScene.load(f))
        except (ValidationError, ValueError, TypeError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
            reason = (
                str(e)
                if str(f) in str(e)
                else f"{f}: not a readable MetricScene .npz ({type(e).__name__}: {e})"
            )
            failures.append((f.stem, reason))
    return scenes, failures


def centre_plan_to_rear_axle(plan: np.ndarray, center_to_rear_axle: float) -> np.ndarray:
    """(T, 3) poses of the ego box centre in the box-centre frame at t = 0 → (T, 3) rear-axle poses in
    the rear-axle frame at t = 0 (the NAVSIM plan convention). The rear axle lies `center_to_rear_axle`
    metres behind the centre along the heading."""
    p = np.asarray(plan, np.float64)
    d = float(center_to_rear_axle)
    rear = p[:, :2] - d * np.stack([np.cos(p[:, 2]), np.sin(p[:, 2])], -1) + np.array([d, 0.0])
    return np.concatenate([rear, p[:, 2:3]], -1)


def metric_scene_from_scene(
    scene: Scene,
    center_to_rear_axle: float = 0.5 * (PACIFICA[1] - PACIFICA[2]),
    ego_geometry: tuple[float, float, float, float] = PACIFICA,
    speed_limit: float = float("nan"),
) -> MetricScene:
    """Convert a project `Scene` (poses of the ego **box centre**, current ego frame, agents at 0 … 4 s)
    to a MetricScene in the rear-axle frame at t = 0 — the one place this conversion happens.

    `center_to_rear_axle` [m]: how far the rear axle lies behind the Scene's ego reference point (the box
    centre for `world/episode.py`; 1.461 m for the Pacifica). `ego_geometry`: width, front and rear
    length from the rear axle, wheelbase [m] (e.g. for the default world: EGO_WIDTH, EGO_LENGTH/2 + d,
    EGO_LENGTH/2 - d, wheelbase). `speed_limit` [m/s]: the map's limit at the ego (NaN: none, PDM-Closed
    then targets its own fallback speed).
    """
    priv = scene.privileged
    if priv is None:
        raise ValidationError(f"scene {scene.token}: PDMS needs the privileged part (agents, map, future)")
    d = float(center_to_rear_axle)

    def shift(
        xy: np.ndarray,
    ) -> np.ndarray:  # box-centre frame → rear-axle frame (pure translation by +d in x)
        return np.asarray(xy, np.float64) + np.array([d, 0.0])

    human = centre_plan_to_rear_axle(priv.future_trajectory, d)
    agents = np.asarray(priv.agents, np.float64)  # (K, A, 8) AGENT_FIELDS
    n_k = agents.shape[0]
    cls = agents[0, :, 7].astype(np.int64) if n_k else np.zeros(0, np.int64)
    speed, _, yaw_rate = (float(v) for v in scene.agent_input.ego_status)
    wheelbase = ego_geometry[3]
    steering = (
        float(np.clip(np.arctan(wheelbase * yaw_rate / speed), -np.pi / 3, np.pi / 3)) if speed > 1.0 else 0.0
    )
    m = priv.map
    return MetricScene(
        token=scene.token,
        ego_pose=np.zeros(3),
        ego_dynamics=np.array([speed, float(scene.agent_input.ego_status[1]), steering, yaw_rate]),
        agent_times=np.arange(n_k) * 0.5,
        agent_poses=np.concatenate([shift(agents[..., :2]), agents[..., 2:3]], -1),
        agent_velocities=agents[..., 5:7],
        agent_sizes=agents[0, :, 3:5] if n_k else np.zeros((0, 2)),
        agent_valid=np.asarray(priv.agents_valid, bool),
        agent_types=cls,
        agent_static=cls == int(AgentClass.STATIC),
        agent_ids=np.array([f"{scene.token}/{a}" for a in range(agents.shape[1])]),
        drivable_polygons=[shift(p) for p in m.drivable_polygons],
        lane_polygons=[shift(p) for p in m.lane_polygons],
        lane_ids=np.array([str(i) for i in range(len(m.lane_polygons))]),
        lane_on_route=np.asarray(m.lane_on_route, bool),
        intersection_polygons=[shift(p) for p in m.intersection_polygons],
        route=shift(m.route),
        human_future=human,
        human_valid=np.asarray(priv.future_valid, bool),
        ego_geometry=np.asarray(ego_geometry, np.float64),
        speed_limit=float(speed_limit),
    )
