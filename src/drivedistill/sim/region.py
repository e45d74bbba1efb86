"""Point-in-region queries on a grid of certain cells: exact, and most points answered by a table look-up.

A region (a shapely polygon union in a scene's scoring frame) is covered by a square grid. Every cell
whose closed square touches the region's boundary is marked "boundary" (conservatively: each boundary
segment is cut into pieces shorter than half a cell and the cells under each piece's bounding box,
grown by `EPS`, are marked). Every other cell lies wholly in the region's interior or wholly outside,
and its status is that of its centre (at build time, one `shapely.contains_xy` call over one centre per
run of such cells along a grid row: a run is connected and never meets the boundary). A query point in a certain cell takes the cell's status; a point in a boundary cell is tested
exactly with `shapely.contains_xy` — so the answer equals `shapely.contains_xy(region, x, y)` for every
point (points on the boundary are outside, as in shapely).

`scene_regions(map_index)` builds the grids of a `MapIndex` (drivable area, on-route lanes,
intersections) once and keeps them for as long as the index lives.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import shapely

from drivedistill.geometry.scene_index import MapIndex

EPS = 1e-6  # [m] margin of the boundary marking (≫ float rounding of scene coordinates)
OUTSIDE, INSIDE, BOUNDARY = 0, 1, 2
MAX_CELLS = 4_000_000
# scene grids: 0.5 m cells while a region's grid stays within this many cells (the default world's
# scenes), else 1 m (city-scale AV2 maps, where the finer grid costs index time and saves no query time)
SCENE_CELL, SCENE_MAX_CELLS = 0.5, 250_000


class GridRegion:
    """Exact `contains_xy` of a (prepared) shapely geometry with a grid of certain cells.

    cell: grid spacing [m] (doubled while the region's bounding box would need more than `max_cells`)."""

    def __init__(self, geometry: shapely.Geometry, cell: float = 1.0, max_cells: int = MAX_CELLS) -> None:
        self.geometry = geometry
        self.empty = bool(shapely.is_empty(geometry))
        if self.empty:
            return
        x0, y0, x1, y1 = shapely.bounds(geometry)
        while (x1 - x0) / cell * (y1 - y0) / cell > max_cells:
            cell *= 2.0
        self.cell = cell
        # two cells of margin: the outer ring of cells is certainly outside, and far points clip onto it
        self.origin = np.array([x0 - 2 * cell, y0 - 2 * cell])
        self.shape = (int(np.ceil((x1 - x0) / cell)) + 5, int(np.ceil((y1 - y0) / cell)) + 5)
        status = np.zeros(self.shape, np.int8)
        status[self._boundary_cells()] = BOUNDARY
        # A run of adjacent certain cells along a grid row is connected and never meets the boundary, so
        # it is wholly inside or wholly outside: one centre per run is tested.
        flat = status.ravel()
        free = flat != BOUNDARY
        col = np.arange(flat.size) % self.shape[1]
        starts = free & ((col == 0) | ~np.roll(free, 1))
        run = np.cumsum(starts) - 1
        first = np.flatnonzero(starts)
        centres = self.origin + (np.stack(np.unravel_index(first, self.shape), -1) + 0.5) * cell
        run_in = shapely.contains_xy(geometry, centres[:, 0], centres[:, 1])
        flat[free] = np.where(run_in[run[free]], INSIDE, OUTSIDE)
        self.status = status
        self.flat_status = status.ravel()

    def _boundary_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices of every cell whose closed square comes within EPS of the region's boundary."""
        rings = shapely.get_rings(shapely.get_parts(self.geometry))
        coords, ring = shapely.get_coordinates(rings, return_index=True)
        same = ring[1:] == ring[:-1]
        a, b = coords[:-1][same], coords[1:][same]  # (S, 2) segments
        pieces = np.maximum(np.ceil(np.linalg.norm(b - a, axis=-1) / (0.5 * self.cell)), 1).astype(np.int64)
        seg = np.repeat(np.arange(len(a)), pieces)
        first = np.repeat(np.cumsum(pieces) - pieces, pieces)
        k = np.arange(len(seg)) - first  # piece index within its segment
        frac0 = (k / pieces[seg])[:, None]
        frac1 = ((k + 1) / pieces[seg])[:, None]
        p = a[seg] + frac0 * (b[seg] - a[seg])
        q = a[seg] + frac1 * (b[seg] - a[seg])
        lo = np.floor((np.minimum(p, q) - EPS - self.origin) / self.cell).astype(np.int64)
        hi = np.floor((np.maximum(p, q) + EPS - self.origin) / self.cell).astype(np.int64)
        # pieces are shorter than half a cell: their boxes span at most two cells per axis
        ix = np.concatenate([lo[:, 0], lo[:, 0], hi[:, 0], hi[:, 0]])
        iy = np.concatenate([lo[:, 1], hi[:, 1], lo[:, 1], hi[:, 1]])
        return np.clip(ix, 0, self.shape[0] - 1), np.clip(iy, 0, self.shape[1] - 1)

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """(...) bool: points (..., 2) in the region's interior — equal to shapely.contains_xy."""
        lead = xy.shape[:-1]
        if self.empty:
            return np.zeros(lead, bool)
        x, y = xy[..., 0].ravel(), xy[..., 1].ravel()
        inv = 1.0 / self.cell
        # truncation toward zero equals floor for x ≥ origin; points left of / below the grid clip onto its
        # outer ring, which is certainly outside (as they are)
        ix = np.clip(((x - self.origin[0]) * inv).astype(np.int64), 0, self.shape[0] - 1)
        iy = np.clip(((y - self.origin[1]) * inv).astype(np.int64), 0, self.shape[1] - 1)
        status = self.flat_status[ix * self.shape[1] + iy]
        out = status == INSIDE
        exact = np.flatnonzero(status == BOUNDARY)
        if len(exact):
            out[exact] = shapely.contains_xy(self.geometry, x[exact], y[exact])
        return out.reshape(lead)


@dataclass
class SceneRegions:
    """Grids of a MapIndex's drivable area, on-route lanes and intersections."""

    drivable: GridRegion
    on_route: GridRegion
    intersection: GridRegion


_CACHE: weakref.WeakKeyDictionary[MapIndex, SceneRegions] = weakref.WeakKeyDictionary()


def scene_regions(map_index: MapIndex) -> SceneRegions:
    """The grids of `map_index`, built on first use and kept while the index lives (per-scene structure)."""
    regions = _CACHE.get(map_index)
    if regions is None:
        regions = SceneRegions(
            *(
                GridRegion(geom, SCENE_CELL, SCENE_MAX_CELLS)
                for geom in (map_index.drivable, map_index.on_route, map_index.intersection)
            )
        )
        _CACHE[map_index] = regions
    return regions
