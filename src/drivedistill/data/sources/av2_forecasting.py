"""Argoverse 2 motion-forecasting scenarios (scenario_*.parquet + map JSON) → Scenes and MetricScenes.

A scenario is 11 s of tracks at 10 Hz in the city frame; the track "AV" is the ego (its pose is taken
as the egovehicle frame, rear axle, as in the sensor logs). Scenes are cut every 0.5 s from t = 2 s (full
2 s ego history) while 4 s of ego future remain. Tracks carry no box sizes: each object type gets the
nominal size in `NOMINAL_SIZE` [m] (length, width). Object types map to `AgentClass` as in
`TYPE_CLASS`. Everything after parsing — scene cutting, route, agents, map, Scene — is `av2.py`'s code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from drivedistill.config import check
from drivedistill.data.sources.av2 import (
    CATEGORY_CLASS,
    FUTURE_S,
    PACIFICA,
    STEP_S,
    Annotations,
    Av2Config,
    Av2Log,
    Av2Source,
    EgoTrack,
    _load_map,
)
from drivedistill.data.sources.base import SourceError
from drivedistill.registry import register
from drivedistill.types import AgentClass
from drivedistill.world.bev import BevConfig

TYPE_CLASS: dict[str, AgentClass] = {
    "vehicle": AgentClass.VEHICLE,
    "bus": AgentClass.VEHICLE,
    "pedestrian": AgentClass.PEDESTRIAN,
    "cyclist": AgentClass.BICYCLE,
    "motorcyclist": AgentClass.BICYCLE,
    "riderless_bicycle": AgentClass.BICYCLE,
    "static": AgentClass.STATIC,
    "background": AgentClass.STATIC,
    "construction": AgentClass.STATIC,
    "unknown": AgentClass.STATIC,
}
NOMINAL_SIZE: dict[AgentClass, tuple[float, float]] = {
    AgentClass.VEHICLE: (4.5, 2.0),
    AgentClass.PEDESTRIAN: (0.6, 0.6),
    AgentClass.BICYCLE: (1.8, 0.7),
    AgentClass.STATIC: (1.0, 1.0),
}
HISTORY_S = 2.0


@dataclass
class Av2ForecastingConfig:
    """Where the scenarios are (directories holding scenario_<id>.parquet and its map JSON)."""

    root: str = "../shared/data/argoverse2/forecasting_scenarios"
    scenarios: list[str] = field(default_factory=list)  # ids; empty = every scenario directory under root
    ego_geometry: tuple[float, float, float, float] = field(default=PACIFICA, metadata=check(ge=0))
    camera_height: int = field(default=128, metadata=check(ge=1))
    camera_width: int = field(default=256, metadata=check(ge=1))
    bev: BevConfig = field(default_factory=BevConfig)


class Av2ForecastingSource(Av2Source):
    name = "av2_forecasting"

    def __init__(self, cfg: Av2ForecastingConfig) -> None:
        self.fcfg = cfg
        self.cfg = Av2Config(
            root=cfg.root,
            ego_geometry=cfg.ego_geometry,
            camera_height=cfg.camera_height,
            camera_width=cfg.camera_width,
            bev=cfg.bev,
        )
        self.root = Path(cfg.root)
        if not self.root.is_dir():
            raise SourceError(
                f"{self.root}: forecasting root not found; pass --root (a directory of scenario directories)"
            )
        found = sorted(p.parent.name for p in self.root.glob("*/scenario_*.parquet"))
        self.logs = cfg.scenarios or found
        if not self.logs:
            raise SourceError(f"{self.root}: no <id>/scenario_<id>.parquet files")

    def store_config(self) -> dict[str, Any]:
        from drivedistill.config import to_dict

        return {"source": {"name": self.name, **to_dict(self.fcfg)}}

    def load(self, episode: str) -> Av2Log:
        path = self.root / episode / f"scenario_{episode}.parquet"
        if not path.exists():
            raise SourceError(f"{path}: missing; scenario ids are the directory names under {self.root}")
        df = pq.read_table(path).to_pandas().sort_values(["track_id", "timestep"]).reset_index(drop=True)
        unknown = sorted(set(df.object_type) - set(TYPE_CLASS))
        if unknown:
            raise SourceError(
                f"{path}: unknown object types {unknown}; add them to av2_forecasting.TYPE_CLASS"
            )
        times = df.timestep.to_numpy() * 0.1
        av = df[df.track_id == "AV"]
        if av.empty:
            raise SourceError(f"{path}: no track 'AV' (the ego); not an AV2 motion-forecasting scenario")
        ego = EgoTrack(
            None,
            times=av.timestep.to_numpy() * 0.1,
            poses=np.stack([av.position_x.to_numpy(), av.position_y.to_numpy(), av.heading.to_numpy()], -1),
        )
        others = df.track_id.to_numpy() != "AV"
        ann = Annotations.__new__(Annotations)
        ann.times = times[others]
        ann.track = df.track_id.to_numpy()[others].astype(str)
        ann.xy = np.stack([df.position_x.to_numpy(), df.position_y.to_numpy()], -1)[others]
        ann.yaw = df.heading.to_numpy()[others]
        ann.vel = np.stack([df.velocity_x.to_numpy(), df.velocity_y.to_numpy()], -1)[others]
        cls = [TYPE_CLASS[t] for t in df.object_type.to_numpy()[others]]
        ann.size = np.array([NOMINAL_SIZE[c] for c in cls], np.float64).reshape(-1, 2)
        ann.category = np.array([f"forecasting:{t}" for t in df.object_type.to_numpy()[others]])
        ann.clock = np.unique(times)
        drivable, lanes = _load_map(self.root / episode)
        t0s = [
            float(t)
            for t in np.arange(HISTORY_S, ego.times[-1] - FUTURE_S + 1e-6, STEP_S)
            if t + FUTURE_S <= ego.times[-1] - 0.05 + 1e-9
        ]
        city = str(df.city.iloc[0]) if "city" in df else ""
        return Av2Log(episode, ego, ann, drivable, lanes, t0s, city)


CATEGORY_CLASS.update({f"forecasting:{k}": v for k, v in TYPE_CLASS.items()})


@register("source", "av2_forecasting", Av2ForecastingConfig)
def build(cfg: Av2ForecastingConfig) -> Av2ForecastingSource:
    return Av2ForecastingSource(cfg)
