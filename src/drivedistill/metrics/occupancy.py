"""BEV occupancy grid of the nuScenes open-loop metric (ST-P3 `PlanningMetric` constants) and its rasteriser.

Grid: x and y in [-50, 50] m at 0.5 m → 200 × 200 cells, current ego frame (x forward, y left).
`occupancy[t, i, j]` is the cell centred at x = -49.75 + 0.5·i, y = -49.75 + 0.5·j (the reference's
cell-centre offset = lower bound + res/2). "Polygon fill" means, as in `skimage.draw.polygon`, that a cell
belongs to a polygon when its centre lies inside (boundary inclusive here); boxes are convex, so the
fill is an exact rectangle test in the box frame.

numpy only: this module must import nowhere near torch.
"""

from __future__ import annotations

import numpy as np

from drivedistill.types import AGENT_FIELDS, AgentClass, Scene

GRID_LOWER = -50.0  # [m] lower bound of x and y
GRID_RES = 0.5  # [m] cell size
GRID_SIZE = 200  # cells along x (i) and y (j)
CELL_CENTRE_OFFSET = GRID_LOWER + GRID_RES / 2  # [m] -49.75: centre of cell 0
NUM_STEPS = 6  # future steps 0.5 ... 3.0 s
EGO_LENGTH = 4.084  # [m]
EGO_WIDTH = 1.85  # [m]
EGO_FORWARD_OFFSET = 0.5  # [m] the ego box centre is this far ahead of the waypoint

# Obstacle classes that occupy the grid. UniAD: vehicles only (car, bus, construction vehicle, bicycle,
# motorcycle, truck, trailer → our VEHICLE and BICYCLE); ST-P3 / VAD: vehicles + pedestrians.
OCCUPANCY_CLASSES: dict[str, frozenset[int]] = {
    "vehicles": frozenset({AgentClass.VEHICLE, AgentClass.BICYCLE}),
    "vehicles+pedestrians": frozenset({AgentClass.VEHICLE, AgentClass.BICYCLE, AgentClass.PEDESTRIAN}),
}

_F = {name: k for k, name in enumerate(AGENT_FIELDS)}


def to_cell_units(xy_m: np.ndarray) -> np.ndarray:
    """Metres → continuous cell coordinates (..., 2): cell (i, j) is centred at integer (i, j)."""
    return (np.asarray(xy_m, np.float64) - CELL_CENTRE_OFFSET) / GRID_RES


def box_cells(
    centres: np.ndarray, yaws: np.ndarray, lengths: np.ndarray, widths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells covered by oriented boxes (polygon fill), vectorised over boxes.

    centres (B, 2) box centres x, y [m], current ego frame; yaws (B,) [rad]; lengths, widths (B,) [m]
    (length along the heading). Returns ii (B, K, 1), jj (B, 1, K) int cell indices of a K × K window
    around each box and inside (B, K, K) bool: the cell centre lies in the box and the cell in the grid.
    """
    centres = np.asarray(centres, np.float64)
    half_l, half_w = np.asarray(lengths, np.float64) / 2, np.asarray(widths, np.float64) / 2
    # the window covers the largest box in any orientation (+1 cell for the rounding of the centre)
    radius = int(np.ceil(np.hypot(half_l, half_w).max() / GRID_RES)) + 1
    offsets = np.arange(-radius, radius + 1)
    c0 = np.rint(to_cell_units(centres)).astype(np.int64)  # (B, 2)
    ii = c0[:, 0, None, None] + offsets[None, :, None]
    jj = c0[:, 1, None, None] + offsets[None, None, :]
    dx = CELL_CENTRE_OFFSET + GRID_RES * ii - centres[:, 0, None, None]
    dy = CELL_CENTRE_OFFSET + GRID_RES * jj - centres[:, 1, None, None]
    cos, sin = np.cos(yaws)[:, None, None], np.sin(yaws)[:, None, None]
    along, across = dx * cos + dy * sin, -dx * sin + dy * cos  # cell centre in the box frame
    inside = (np.abs(along) <= half_l[:, None, None]) & (np.abs(across) <= half_w[:, None, None])
    inside &= (ii >= 0) & (ii < GRID_SIZE) & (jj >= 0) & (jj < GRID_SIZE)
    return ii, jj, inside


def rasterise_boxes(
    centres: np.ndarray,
    yaws: np.ndarray,
    lengths: np.ndarray,
    widths: np.ndarray,
    steps: np.ndarray,
    num_steps: int = NUM_STEPS,
) -> np.ndarray:
    """Fill oriented boxes (see `box_cells`) into per-step grids: (num_steps, 200, 200) bool.

    steps (B,) int: the grid each box goes to. Cells outside the grid are dropped.
    """
    grid = np.zeros((num_steps, GRID_SIZE, GRID_SIZE), bool)
    if len(centres) == 0:
        return grid
    ii, jj, inside = box_cells(centres, yaws, lengths, widths)
    b, i, j = np.nonzero(inside)
    grid[np.asarray(steps, np.int64)[b], ii[b, i, 0], jj[b, 0, j]] = True
    return grid


def ego_footprint_offsets() -> np.ndarray:
    """The reference's ego footprint, rasterised once: (32, 2) int cell indices (i, j).

    The box x ∈ [-L/2 + 0.5, L/2 + 0.5], y ∈ [-W/2, W/2] m around a waypoint at the origin, in cell units
    (x + 49.75) / 0.5 ∈ [96.42, 104.58], (y + 49.75) / 0.5 ∈ [97.65, 101.35] → i = 97..104, j = 98..101.
    A waypoint p then covers trunc(p / 0.5 + offsets): translated, never rotated.
    """
    grid = rasterise_boxes(
        np.array([[EGO_FORWARD_OFFSET, 0.0]]),
        np.zeros(1),
        np.array([EGO_LENGTH]),
        np.array([EGO_WIDTH]),
        np.zeros(1, np.int64),
        1,
    )
    return np.argwhere(grid[0])


def occupancy_from_scene(scene: Scene, classes: str = "vehicles+pedestrians") -> np.ndarray:
    """Future occupancy (6, 200, 200) bool at 0.5 ... 3.0 s from `scene.privileged.agents`.

    Agent steps 1..6 of the 0..4 s grid (AGENT_FIELDS, current ego frame) with `agents_valid` set and a
    class in OCCUPANCY_CLASSES[classes] are filled as oriented boxes (cell centre inside the box).
    """
    if classes not in OCCUPANCY_CLASSES:
        raise ValueError(f"occupancy classes {classes!r} unknown; use one of {sorted(OCCUPANCY_CLASSES)}")
    if scene.privileged is None:
        raise ValueError(f"scene {scene.token}: privileged part removed; occupancy needs its agent boxes")
    agents = scene.privileged.agents[1 : NUM_STEPS + 1]  # (6, A, 8)
    keep = scene.privileged.agents_valid[1 : NUM_STEPS + 1].copy()
    keep &= np.isin(np.rint(agents[..., _F["class"]]).astype(np.int64), sorted(OCCUPANCY_CLASSES[classes]))
    t, a = np.nonzero(keep)
    boxes = agents[t, a]
    return rasterise_boxes(
        boxes[:, [_F["x"], _F["y"]]], boxes[:, _F["yaw"]], boxes[:, _F["length"]], boxes[:, _F["width"]], t
    )


class PackedOccupancy:
    """Bit-packed occupancy: `bits` (N, 6, 200, 25) uint8 = `np.packbits(dense, axis=-1)` (big-endian bit
    order, numpy's default) of a dense (N, 6, 200, 200) bool grid — 8× smaller, read without unpacking.

    Indexing with a slice gives the samples' PackedOccupancy; indexing with four integer index arrays
    (n, t, i, j) gives the cells' bools, exactly as the dense grid would.
    """

    def __init__(self, bits: np.ndarray) -> None:
        bits = np.asarray(bits)
        want = (NUM_STEPS, GRID_SIZE, (GRID_SIZE + 7) // 8)
        if bits.ndim != 4 or bits.shape[1:] != want or bits.dtype != np.uint8:
            raise ValueError(
                f"occupancy_packed: expected (N, {want[0]}, {want[1]}, {want[2]}) uint8 = "
                f"np.packbits(occupancy, axis=-1), got {bits.shape} {bits.dtype}"
            )
        self.bits = bits

    @classmethod
    def pack(cls, dense: np.ndarray) -> PackedOccupancy:
        return cls(np.packbits(np.asarray(dense) != 0, axis=-1))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.bits), NUM_STEPS, GRID_SIZE, GRID_SIZE)

    def __len__(self) -> int:
        return len(self.bits)

    def __getitem__(self, key: slice | tuple[np.ndarray, ...]) -> PackedOccupancy | np.ndarray:
        if isinstance(key, slice):
            return PackedOccupancy(self.bits[key])
        n, t, i, j = key
        j = np.asarray(j)
        return ((self.bits[n, t, i, j >> 3] >> (7 - (j & 7))) & 1).astype(bool)

    def dense(self) -> np.ndarray:
        return np.unpackbits(self.bits, axis=-1, count=GRID_SIZE).astype(bool)
