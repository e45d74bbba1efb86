"""nuScenes map expansion (v1.3) → the map layers the labelled BEV and PDMS read, in a sample's ego frame.

Read (no nuscenes-devkit: it pins numpy < 2; tests/test_nuscenes_map.py cross-checks this module against
the devkit's `NuScenesMap.get_map_mask` / `discretize_lanes` in `.venv-nuscenes`):

    ROOT/maps/expansion/<location>.json     one file per log location (the map expansion download)
        node            {token, x, y}                          global frame [m]
        polygon         {token, exterior_node_tokens, holes: [{node_tokens}]}
        line            {token, node_tokens}
        drivable_area   {token, polygon_tokens}                → drivable polygons (with holes)
        road_segment    {token, polygon_token, is_intersection} → intersection polygons
        lane, lane_connector {token, polygon_token, ...}       → lane surfaces (lane_connector: inside junctions)
        arcline_path_3  {lane token: [{start_pose, end_pose, shape, radius, segment_length}]} → centrelines
        connectivity    {lane token: {incoming, outgoing}}     → the lane graph (route look-ahead)
        lane_divider, road_divider {token, line_token}         → lane markings (labelled BEV channel 1)

Frames. Everything here is global (the nuScenes map frame) until `NuScenesMap.around` crops a window and
converts it once with `global_xy_to_ego`: the planar (yaw-only) transform of a sample's ego pose, as the
devkit's `get_map_mask(patch_angle=yaw)` does — the map has no heights, so roll and pitch are dropped.

Polygons with holes (nuScenes' drivable area is a few large polygons with a hole per block) are cut into
hole-free pieces (`hole_free`: split at a vertical line through each hole; the pieces' union is the
polygon) because `MapGeometry`, `MetricScene` and the BEV raster hold simple polygons.

Centrelines: `arcline_path_3` is a chain of Dubins-like paths (three segments: left arc, right arc or
straight, of `radius`); `arcline_poses` evaluates each in closed form at `ceil(L / resolution) + 1`
equally spaced arc lengths — the sampling of the devkit's `discretize_lane`, so the points compare 1:1.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from drivedistill.data.sources.base import SourceError

MAP_VERSION = "1.3"
MAP_DIR = ("maps", "expansion")
REQUIRED_LAYERS = (
    "node",
    "polygon",
    "line",
    "drivable_area",
    "road_segment",
    "lane",
    "lane_connector",
    "arcline_path_3",
    "connectivity",
    "lane_divider",
    "road_divider",
)
MARKING_WIDTH = 0.2  # [m] divider strips in the labelled BEV (the world's marking width, world/roadmap.py)
SEGMENT_CURVATURE_SIGN = {"L": 1.0, "R": -1.0, "S": 0.0}


def map_path(root: str | Path, location: str) -> Path:
    """ROOT/maps/expansion/<location>.json."""
    return Path(root).joinpath(*MAP_DIR, f"{location}.json")


# ----- frames ---------------------------------------------------------------------------------------
def global_xy_to_ego(T_global_ego: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Global map points (N, 2) → the ego frame (x forward, y left) of the pose T_global_ego (4 × 4), planar:
    the ego's yaw and position only (the map is 2-D; the devkit's map masks rotate by the yaw alone)."""
    yaw = math.atan2(T_global_ego[1, 0], T_global_ego[0, 0])
    c, s = math.cos(yaw), math.sin(yaw)
    d = np.asarray(xy, np.float64) - T_global_ego[:2, 3]
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], -1)


def _affine_to_ego(T_global_ego: np.ndarray) -> list[float]:
    """`shapely.affinity.affine_transform` matrix [a, b, d, e, xoff, yoff] of `global_xy_to_ego`."""
    yaw = math.atan2(T_global_ego[1, 0], T_global_ego[0, 0])
    c, s = math.cos(yaw), math.sin(yaw)
    tx, ty = float(T_global_ego[0, 3]), float(T_global_ego[1, 3])
    return [c, s, -s, c, -(c * tx + s * ty), s * tx - c * ty]


# ----- centrelines ----------------------------------------------------------------------------------
def arcline_pose_at(path: dict[str, Any], s: float) -> np.ndarray:
    """(x, y, yaw) [m, m, rad] at arc length s [m] along one arcline_path_3 record (global frame)."""
    x, y, yaw = (float(v) for v in path["start_pose"])
    radius = float(path["radius"])
    for letter, length in zip(path["shape"], path["segment_length"]):
        step = min(max(s, 0.0), float(length))
        k = SEGMENT_CURVATURE_SIGN[letter] / radius
        if abs(k) < 1e-12:
            x, y = x + step * math.cos(yaw), y + step * math.sin(yaw)
        else:
            x += (math.sin(yaw + k * step) - math.sin(yaw)) / k
            y += (math.cos(yaw) - math.cos(yaw + k * step)) / k
            yaw += k * step
        s -= float(length)
        if s <= 0.0:
            break
    return np.array([x, y, math.remainder(yaw, 2 * math.pi)])


def arcline_poses(path: dict[str, Any], resolution: float) -> np.ndarray:
    """(N, 3) poses every ≈ `resolution` m along one arcline path, both ends included: N = ceil(L / res) + 1
    equally spaced arc lengths (the devkit's sampling)."""
    total = float(sum(path["segment_length"]))
    n = max(math.ceil(total / resolution) + 1, 2)
    return np.stack([arcline_pose_at(path, s) for s in np.linspace(0.0, total, n)])


def lane_centreline(paths: list[dict[str, Any]], resolution: float) -> np.ndarray:
    """(N, 3) poses of a lane's arcline paths, concatenated in order (as the devkit's `discretize_lane`)."""
    if not paths:
        return np.zeros((0, 3))
    return np.concatenate([arcline_poses(p, resolution) for p in paths])


# ----- polygons -------------------------------------------------------------------------------------
def hole_free(geom: shapely.Geometry, min_area: float = 1e-6) -> list[np.ndarray]:
    """Simple polygons (K, 2) whose union is `geom` (a Polygon / MultiPolygon / collection): a polygon with
    holes is cut along the vertical line through each hole's centroid, which leaves no hole whole."""
    out: list[np.ndarray] = []
    for part in shapely.get_parts(geom):
        if not isinstance(part, shapely.Polygon) or part.area <= min_area:
            if isinstance(part, shapely.GeometryCollection | shapely.MultiPolygon):
                out += hole_free(part, min_area)
            continue
        if not part.interiors:
            out.append(np.asarray(part.exterior.coords, np.float64)[:-1, :2])
            continue
        x0, y0, x1, y1 = part.bounds
        cuts = sorted({float(shapely.Polygon(r).centroid.x) for r in part.interiors})
        edges = [x0, *cuts, x1]
        for a, b in itertools.pairwise(edges):
            if b - a > 1e-9:
                out += hole_free(part.intersection(shapely.box(a, y0 - 1, b, y1 + 1)), min_area)
    return out


@dataclass
class LaneRecord:
    """A lane or lane connector: global polygon, centreline poses (N, 3), lane-graph neighbours."""

    token: str
    polygon: shapely.Geometry  # made valid (may be a MultiPolygon; empty without a polygon_token)
    centreline: np.ndarray
    incoming: list[str]
    outgoing: list[str]
    connector: bool


@dataclass
class LocalMap:
    """The map in a window around one ego pose, in that ego frame [m]. Polygons are hole-free (K, 2)."""

    drivable: list[np.ndarray]
    intersections: list[np.ndarray]
    lane_tokens: list[str]
    lane_polygons: list[np.ndarray]  # one exterior per lane (not cut at the window)
    lane_centrelines: list[np.ndarray]  # (N, 2) each, driving direction
    markings: list[np.ndarray]  # lane / road dividers as MARKING_WIDTH strips


class NuScenesMap:
    """One location's map expansion JSON, parsed once (global frame); `around` crops it per sample."""

    def __init__(self, path: str | Path, resolution: float = 0.5) -> None:
        self.path = Path(path)
        fix = (
            "download the nuScenes map expansion (v1.3) and unpack it so that ROOT/maps/expansion/<location>.json "
            "exists, or pass --source.map=off to collect without map layers"
        )
        if not self.path.exists():
            raise SourceError(f"{self.path}: map expansion file missing; {fix}")
        try:
            data = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SourceError(f"{self.path}: not valid JSON ({e}); re-download the map expansion") from None
        if not isinstance(data, dict):
            raise SourceError(f"{self.path}: expected a JSON object with the map layers; {fix}")
        version = str(data.get("version", "1.0"))
        if version < MAP_VERSION:
            raise SourceError(
                f"{self.path}: map expansion version {version}; this reader needs v{MAP_VERSION} (lane centrelines "
                "as arcline_path_3) — download the current map expansion"
            )
        missing = [k for k in REQUIRED_LAYERS if k not in data]
        if missing:
            raise SourceError(f"{self.path}: missing layer(s) {missing}; re-download the map expansion v1.3")
        self.version = version
        try:
            self._parse(data, resolution)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise SourceError(
                f"{self.path}: malformed map expansion ({type(e).__name__}: {e}); re-download the map expansion v1.3"
            ) from None

    def _parse(self, data: dict[str, Any], resolution: float) -> None:
        nodes = {n["token"]: (float(n["x"]), float(n["y"])) for n in data["node"]}
        polys = {p["token"]: p for p in data["polygon"]}
        lines = {ln["token"]: ln for ln in data["line"]}

        def polygon(token: str | None) -> shapely.Geometry:
            if token is None:  # a record without geometry: kept for the lane graph, never drawn or scored
                return shapely.Polygon()
            rec = polys[token]
            shell = [nodes[t] for t in rec["exterior_node_tokens"]]
            holes = [[nodes[t] for t in h["node_tokens"]] for h in rec.get("holes", []) if h["node_tokens"]]
            return shapely.make_valid(shapely.Polygon(shell, holes))

        self.drivable = [polygon(t) for rec in data["drivable_area"] for t in rec["polygon_tokens"]]
        self.intersections = [
            polygon(r["polygon_token"]) for r in data["road_segment"] if r["is_intersection"]
        ]
        arclines, graph = data["arcline_path_3"], data["connectivity"]
        self.lanes: dict[str, LaneRecord] = {}
        for layer, connector in (("lane", False), ("lane_connector", True)):
            for rec in data[layer]:
                tok = rec["token"]
                links = graph.get(tok, {"incoming": [], "outgoing": []})
                self.lanes[tok] = LaneRecord(
                    tok,
                    polygon(rec.get("polygon_token")),
                    lane_centreline(arclines.get(tok, []), resolution),
                    list(links["incoming"]),
                    list(links["outgoing"]),
                    connector,
                )
        self.dividers = [
            shapely.LineString([nodes[t] for t in lines[r["line_token"]]["node_tokens"]])
            for layer in ("lane_divider", "road_divider")
            for r in data[layer]
            if len(lines[r["line_token"]]["node_tokens"]) >= 2
        ]
        self.lane_tokens = list(self.lanes)
        self._lane_polys = [self.lanes[t].polygon for t in self.lane_tokens]
        self._lane_tree = shapely.STRtree(self._lane_polys)
        self._drivable_tree = shapely.STRtree(self.drivable)
        self._inter_tree = shapely.STRtree(self.intersections)
        self._divider_tree = shapely.STRtree(self.dividers)

    def lanes_at(self, xy: np.ndarray) -> list[list[str]]:
        """For global points (N, 2): the tokens of the lanes / connectors whose polygon holds each point."""
        pts = shapely.points(np.asarray(xy, np.float64))
        idx_pt, idx_lane = self._lane_tree.query(pts, predicate="within")
        out: list[list[str]] = [[] for _ in range(len(pts))]
        for p, j in zip(idx_pt.tolist(), idx_lane.tolist()):
            out[p].append(self.lane_tokens[j])
        return out

    def around(self, T_global_ego: np.ndarray, half_size: float) -> LocalMap:
        """The layers in the square |x|, |y| ≤ half_size [m] of the ego frame of T_global_ego (4 × 4)."""
        window = shapely.box(-half_size, -half_size, half_size, half_size)
        centre = T_global_ego[:2, 3]
        reach = half_size * math.sqrt(2.0)
        query = shapely.box(*(centre - reach), *(centre + reach))
        A = _affine_to_ego(T_global_ego)

        def local(geoms: list[shapely.Geometry], tree: shapely.STRtree) -> list[shapely.Geometry]:
            return [shapely.affinity.affine_transform(geoms[j], A) for j in tree.query(query)]

        drivable = [g.intersection(window) for g in local(self.drivable, self._drivable_tree)]
        inter = [g.intersection(window) for g in local(self.intersections, self._inter_tree)]
        strips = [
            shapely.buffer(g.intersection(window), MARKING_WIDTH / 2, cap_style="flat")
            for g in local(self.dividers, self._divider_tree)
        ]
        tokens, lane_polys, centres = [], [], []
        for j in self._lane_tree.query(query):
            lane = self.lanes[self.lane_tokens[j]]
            poly = shapely.affinity.affine_transform(lane.polygon, A)
            parts = [p for p in shapely.get_parts(poly) if isinstance(p, shapely.Polygon) and p.area > 1e-6]
            if not parts or not poly.intersects(window) or len(lane.centreline) < 2:
                continue  # no surface (or a degenerate one) or no centreline: not a scorable lane
            biggest = max(parts, key=lambda p: p.area)
            tokens.append(lane.token)
            lane_polys.append(np.asarray(biggest.exterior.coords, np.float64)[:-1, :2])
            centres.append(global_xy_to_ego(T_global_ego, lane.centreline[:, :2]))
        return LocalMap(
            drivable=[p for g in drivable for p in hole_free(g)],
            intersections=[p for g in inter for p in hole_free(g)],
            lane_tokens=tokens,
            lane_polygons=lane_polys,
            lane_centrelines=centres,
            markings=[p for g in strips for p in hole_free(g)],
        )

    def route(self, ego_path: np.ndarray) -> tuple[list[str], set[str]]:
        """Lanes the logged ego drives through, in visit order, and the on-route set.

        ego_path (N, 3) global rear-axle poses (x, y, yaw) from t = 0 to the scene's end. At each pose the
        lane (or connector) holding it whose centreline heading nearest the pose agrees best with the
        ego's heading (cos > 0.5) is visited; one outgoing lane of the last is added as look-ahead. The
        on-route set adds the visited lanes' outgoing lanes and the lanes whose polygon touches a visited
        one with the same overall direction (cos > 0.7) — nuScenes lanes carry no neighbour links; this
        stands in for NAVSIM's route roadblocks (all lanes of a road in the driving direction)."""
        visited: list[str] = []
        for pose, cands in zip(ego_path, self.lanes_at(ego_path[:, :2])):
            h = np.array([math.cos(pose[2]), math.sin(pose[2])])
            best, score = "", 0.5
            for tok in cands:
                c = self.lanes[tok].centreline
                if len(c) < 2:
                    continue
                k = int(np.argmin(np.hypot(*(c[:, :2] - pose[:2]).T)))
                agree = float(np.cos(c[k, 2]) * h[0] + np.sin(c[k, 2]) * h[1])
                if agree > score:
                    best, score = tok, agree
            if best and best not in visited:
                visited.append(best)
        if visited:
            last = self.lanes[visited[-1]]
            nxt = [t for t in last.outgoing if t in self.lanes and t not in visited]
            if nxt:
                visited.append(
                    max(nxt, key=lambda t: float(self._direction(t) @ self._direction(last.token)))
                )
        on_route = set(visited)
        for tok in visited:
            on_route.update(t for t in self.lanes[tok].outgoing if t in self.lanes)
        for tok in visited:
            near = self._lane_tree.query(self.lanes[tok].polygon.buffer(0.3), predicate="intersects")
            for j in near.tolist():
                other = self.lane_tokens[j]
                if float(self._direction(other) @ self._direction(tok)) > 0.7:
                    on_route.add(other)
        return visited, on_route

    def _direction(self, token: str) -> np.ndarray:
        c = self.lanes[token].centreline
        if len(c) < 2:
            return np.zeros(2)
        d = c[-1, :2] - c[0, :2]
        n = float(np.linalg.norm(d))
        return d / n if n > 1e-9 else np.array([math.cos(c[0, 2]), math.sin(c[0, 2])])
