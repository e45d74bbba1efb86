"""Cost of the nuScenes map expansion reader on a synthetic city-sized map (no real map on this machine).

    PYTHONPATH=src python benchmarks/nuscenes_map_speed.py [--blocks 16] [--samples 50]

Writes a grid city in the map expansion v1.3 layout (blocks of 80 m, 14 m roads: one drivable polygon with a
hole per block, two lanes per direction on every road, straight and right-turn connectors at every
junction, a lane and a road divider per road), then measures: JSON parse + index (`NuScenesMap`), and per
sample `around` (64 m window) + `route` (a 20 s logged path along a road) — what `NuScenesSource` adds to
each keyframe.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from drivedistill.data.sources.nuscenes_map import NuScenesMap

BLOCK, ROAD, LANE = 80.0, 14.0, 3.5


def write_city(path: Path, blocks: int) -> dict[str, int]:
    d: dict[str, Any] = {"version": "1.3", "canvas_edge": [0, 0]}
    for k in ("polygon", "line", "node", "drivable_area", "road_segment", "lane", "lane_connector",
              "lane_divider", "road_divider"):  # fmt: skip
        d[k] = []
    d["arcline_path_3"], d["connectivity"] = {}, {}

    def nodes(xy: list[tuple[float, float]]) -> list[str]:
        out = []
        for x, y in xy:
            out.append(f"n{len(d['node'])}")
            d["node"].append({"token": out[-1], "x": x, "y": y})
        return out

    def polygon(shell: list[tuple[float, float]], holes: list[list[tuple[float, float]]] = ()) -> str:  # type: ignore[assignment]
        tok = f"p{len(d['polygon'])}"
        d["polygon"].append(
            {
                "token": tok,
                "exterior_node_tokens": nodes(shell),
                "holes": [{"node_tokens": nodes(h)} for h in holes],
            }
        )
        return tok

    def lane(
        layer: str, start: tuple[float, float, float], shape: str, radius: float, seg: list[float]
    ) -> None:
        tok = f"{layer}{len(d[layer])}"
        x, y, yaw = start
        length = sum(seg)
        nx, ny = -math.sin(yaw), math.cos(yaw)
        ex, ey = x + length * math.cos(yaw), y + length * math.sin(yaw)
        shell = [(x - LANE / 2 * nx, y - LANE / 2 * ny), (ex - LANE / 2 * nx, ey - LANE / 2 * ny),
                 (ex + LANE / 2 * nx, ey + LANE / 2 * ny), (x + LANE / 2 * nx, y + LANE / 2 * ny)]  # fmt: skip
        d[layer].append({"token": tok, "polygon_token": polygon(shell)})
        path = {"start_pose": [x, y, yaw], "end_pose": [ex, ey, yaw], "shape": shape, "radius": radius,
                "segment_length": seg}  # fmt: skip
        d["arcline_path_3"][tok] = [path]
        d["connectivity"][tok] = {"incoming": [], "outgoing": []}

    pitch = BLOCK + ROAD
    size = blocks * pitch + ROAD
    holes = [
        [
            (i * pitch + ROAD, j * pitch + ROAD),
            (i * pitch + pitch, j * pitch + ROAD),
            (i * pitch + pitch, j * pitch + pitch),
            (i * pitch + ROAD, j * pitch + pitch),
        ]
        for i in range(blocks)
        for j in range(blocks)
    ]
    d["drivable_area"].append(
        {"token": "da", "polygon_tokens": [polygon([(0, 0), (size, 0), (size, size), (0, size)], holes)]}
    )
    for k in range(blocks + 1):
        c = k * pitch + ROAD / 2
        for i in range(blocks):
            a, b = i * pitch + ROAD, i * pitch + pitch
            for off in (-1.75, -5.25):  # eastbound (y = c - off... two lanes), then westbound, north, south
                lane("lane", (a, c + off, 0.0), "LSL", 999.0, [0.0, BLOCK, 0.0])
                lane("lane", (b, c - off, math.pi), "LSL", 999.0, [0.0, BLOCK, 0.0])
                lane("lane", (c - off, a, math.pi / 2), "LSL", 999.0, [0.0, BLOCK, 0.0])
                lane("lane", (c + off, b, -math.pi / 2), "LSL", 999.0, [0.0, BLOCK, 0.0])
            for layer, y in (("lane_divider", c + 3.5), ("road_divider", c)):
                line = {"token": f"l{len(d['line'])}", "node_tokens": nodes([(a, y), (b, y)])}
                d["line"].append(line)
                d[layer].append({"token": f"{layer}{len(d[layer])}", "line_token": line["token"]})
    for i in range(blocks + 1):
        for j in range(blocks + 1):
            x0, y0 = i * pitch, j * pitch
            d["road_segment"].append(
                {
                    "token": f"rs{i}_{j}",
                    "is_intersection": True,
                    "polygon_token": polygon(
                        [(x0, y0), (x0 + ROAD, y0), (x0 + ROAD, y0 + ROAD), (x0, y0 + ROAD)]
                    ),
                }
            )
            for yaw in (0.0, math.pi / 2, math.pi, -math.pi / 2):
                lane("lane_connector", (x0, y0 + ROAD / 2, yaw), "LSL", 999.0, [0.0, ROAD, 0.0])
                lane("lane_connector", (x0, y0 + 1.75, yaw), "RSR", 5.25, [5.25 * math.pi / 2, 0.0, 0.0])
    path.write_text(json.dumps(d))
    return {"nodes": len(d["node"]), "lanes": len(d["lane"]), "connectors": len(d["lane_connector"]),
            "holes": len(holes), "mb": path.stat().st_size // 2**20}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--samples", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "city.json"
        stats = write_city(path, args.blocks)
        t0 = time.process_time()
        nmap = NuScenesMap(path)
        parse = time.process_time() - t0
        rng = np.random.default_rng(0)
        pitch = BLOCK + ROAD
        t_around = t_route = 0.0
        for _ in range(args.samples):
            k, i = rng.integers(0, args.blocks), rng.integers(1, args.blocks - 3)
            y = k * pitch + ROAD / 2 - 1.75
            x = i * pitch + ROAD + rng.uniform(0, BLOCK)
            T = np.eye(4)
            T[:2, 3] = (x, y)
            t0 = time.process_time()
            nmap.around(T, 64.0)
            t_around += time.process_time() - t0
            path_xy = np.c_[
                x + np.arange(0.0, 160.0, 0.8), np.full(200, y), np.zeros(200)
            ]  # 20 s at 8 m/s, 0.1 s
            t0 = time.process_time()
            nmap.route(path_xy)
            t_route += time.process_time() - t0
        print(json.dumps({**stats, "parse_s": round(parse, 2),
                          "around_ms": round(1e3 * t_around / args.samples, 1),
                          "route_ms": round(1e3 * t_route / args.samples, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
