"""The road surface of a scenario: its lane strips plus the kerb fillets where roads meet at a junction.

highway-env draws a road network as lane strips that meet edge to edge. Where an entry lane joins a
roundabout ring, or two roads cross, the strips leave a sharp concave notch at the outer corner — a
notch no real junction has (kerbs are rounded: roundabout entry radii and intersection corner radii are
~10–30 m by road design standards). A car turning there sweeps its outer rear corner across the notch
(highway-env's boxes turn about their centre), so an expert that never leaves its lanes was scored
off the drivable area by PDMS (DAC) at every junction turn. The fillets close those notches: the
morphological closing (dilate, then erode, by `FILLET_RADIUS`) of the lane union, kept inside the
junction zone only (so parallel roads, ramps and the roundabout's island stay apart).

- `fillets(scenario)`: world-frame fillet polygons (list of (K, 2)), computed once per process
- `surface(scenario)`: the shapely geometry of lanes ∪ fillets (the LiDAR's kerbs follow its boundary)
- `fillet_pieces(scenario, pose, radius)`: the fillets near `pose`, in its ego frame, for MapGeometry
- `seams(scenario)`, `seam_pieces(...)`: the slivers between adjacent lane strips (road, not kerb)
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

FILLET_RADIUS = 10.0  # [m] kerb radius at junctions
SEAM_CLOSING = 0.05  # [m] closes the slivers between adjacent lane strips (`seams`)
SEAM_MIN_AREA = 1e-3  # [m²]
ZONE_MARGIN = 1.35  # the junction zone: JUNCTION radius × this
LANE_FUSE = 0.05  # [m] lane strips' buffer in the union the fillets close: adjacent strips fuse


@functools.cache
def _geometry(scenario: str) -> tuple[Any, list[np.ndarray]]:
    import shapely

    from drivedistill.world.scenarios import JUNCTION

    lanes = _lane_union(scenario, LANE_FUSE)
    pieces: list[np.ndarray] = []
    if scenario in JUNCTION:
        centre, radius = JUNCTION[scenario]
        zone = shapely.Point(*centre).buffer(radius * ZONE_MARGIN)
        # the closing of the lane union itself: eroded LANE_FUSE further than dilated, so the overlap that
        # fuses adjacent strips does not move any kerb outwards
        closed = lanes.buffer(FILLET_RADIUS, quad_segs=8).buffer(-FILLET_RADIUS - LANE_FUSE, quad_segs=8)
        # minus the lane strips as the metric scenes carry them (unbuffered): a fillet cut from the
        # buffered union stopped 5 cm short of every lane edge, and a box corner in that gap was off-road
        extra = shapely.difference(shapely.intersection(closed, zone), _lane_union(scenario, 0.0))
        for g in getattr(extra, "geoms", [extra]):
            if g.geom_type == "Polygon" and g.area > 0.05:
                if g.interiors:  # a piece that encloses something (the roundabout's island) is no fillet
                    raise ValueError(
                        f"surface({scenario!r}): a fillet with a hole at {g.representative_point()}"
                    )
                pieces.append(np.asarray(g.exterior.coords, np.float64)[:-1])
    full = shapely.union_all([lanes, *[shapely.Polygon(p) for p in pieces]])
    return full, pieces


def fillets(scenario: str) -> list[np.ndarray]:
    """World-frame fillet polygons (K, 2) [m] of `scenario` (empty away from junctions)."""
    return _geometry(scenario)[1]


def surface(scenario: str) -> Any:
    """shapely (Multi)Polygon of the road surface (lanes ∪ fillets), world frame."""
    return _geometry(scenario)[0]


def fillet_pieces(scenario: str, pose: np.ndarray, radius: float) -> list[np.ndarray]:
    """Fillets with a vertex within `radius` [m] of `pose` (x, y, yaw), in its ego frame, float32."""
    return _near(fillets(scenario), pose, radius)


@functools.cache
def seams(scenario: str) -> list[np.ndarray]:
    """World-frame polygons (K, 2) of the slivers between adjacent lane strips: each strip is sampled
    on its own arc length (`roadmap.SAMPLE_STEP`), so the shared edge of two lanes of different length
    is two different chord polylines, leaving gaps of up to a few centimetres on curves that are road,
    not kerb (a box corner on the shared edge of two ring lanes was scored off the drivable area). The
    slivers are the 5 cm closing of the lane union minus the union; the outer edges do not move."""
    import shapely

    lanes = _lane_union(scenario, 0.0)
    closed = lanes.buffer(SEAM_CLOSING, quad_segs=2).buffer(-SEAM_CLOSING, quad_segs=2)
    extra = shapely.difference(closed, lanes)
    return [
        np.asarray(g.exterior.coords, np.float64)[:-1]
        for g in getattr(extra, "geoms", [extra])
        if g.geom_type == "Polygon" and g.area > SEAM_MIN_AREA  # not the numerical specks at corners
    ]


def seam_pieces(scenario: str, pose: np.ndarray, radius: float) -> list[np.ndarray]:
    """`seams` with a vertex within `radius` [m] of `pose` (x, y, yaw), in its ego frame, float32."""
    return _near(seams(scenario), pose, radius)


def _lane_union(scenario: str, buffer: float) -> Any:
    """shapely union of the scenario's lane strips (left edge, then right edge reversed), each buffered
    by `buffer` [m] (0: only repaired)."""
    import shapely

    from drivedistill.world.scenarios import network

    roadmap = network(scenario)[1]
    strips = []
    for key in roadmap.keys:
        ring = roadmap.strip(key)
        if len(ring) >= 3:
            strips.append(shapely.Polygon(ring).buffer(buffer))
    return shapely.union_all(strips)


def _near(polygons: list[np.ndarray], pose: np.ndarray, radius: float) -> list[np.ndarray]:
    """World-frame polygons with a vertex within `radius` [m] of `pose` (x, y, yaw), in its ego frame,
    float32."""
    from drivedistill.world.roadmap import world_to_ego

    return [
        world_to_ego(p, pose).astype(np.float32)
        for p in polygons
        if np.hypot(p[:, 0] - pose[0], p[:, 1] - pose[1]).min() < radius
    ]
