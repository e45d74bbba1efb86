"""Run with nuscenes-devkit's own Python (not the project's): prints what the devkit's map API reads from a
map expansion around a pose, as JSON, for tests/test_nuscenes_map.py. No drivedistill import.

    .venv-nuscenes/bin/python tests/nuscenes_devkit_map_check.py ROOT LOCATION X Y YAW_RAD HEIGHT WIDTH RES

The masks are `NuScenesMap.get_map_mask` of a patch centred on (X, Y) rotated by the yaw: HEIGHT × WIDTH
pixels of the project's BEV (x forward = HEIGHT rows, y left = WIDTH columns) at RES m/px, i.e. the devkit
patch (y extent, x extent) = (WIDTH, HEIGHT) · RES and canvas (WIDTH, HEIGHT); rows of the devkit mask run
along +y, columns along +x.
"""

import json
import math
import sys

import numpy as np
from nuscenes.map_expansion.map_api import NuScenesMap

root, location = sys.argv[1], sys.argv[2]
x, y, yaw, height, width, res = (float(v) for v in sys.argv[3:9])
nmap = NuScenesMap(dataroot=root, map_name=location)
patch = (x, y, width * res, height * res)
canvas = (int(width), int(height))
masks = nmap.get_map_mask(patch, math.degrees(yaw), ["drivable_area", "lane_divider", "road_divider"], canvas)
tokens = [r["token"] for r in nmap.lane + nmap.lane_connector]
lanes = nmap.discretize_lanes(tokens, 0.5)
out = {
    "version": nmap.version,
    "drivable": np.packbits(masks[0].astype(bool)).tolist(),
    "dividers": np.packbits((masks[1] | masks[2]).astype(bool)).tolist(),
    "shape": list(masks.shape[1:]),
    "lanes": {t: [list(map(float, p)) for p in poses] for t, poses in lanes.items()},
    "outgoing": {t: nmap.get_outgoing_lane_ids(t) for t in tokens},
    "closest_lane": nmap.get_closest_lane(x, y, radius=5),
    "intersections": [r["token"] for r in nmap.road_segment if r["is_intersection"]],
}
print(json.dumps(out))
