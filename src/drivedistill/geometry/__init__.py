"""Scene geometry for scoring, the one layer both `sim/` and `metrics/` import from (never the reverse).

- `metric_scene`: `MetricScene`, the plain-data input of PDMS / EPDMS, and its `.npz` file format.
- `planar`: vectorised SE(2) transforms, oriented boxes, separating-axis overlap, polylines.
- `scene_index`: per-scene precomputation — map unions and lane index (`MapIndex`), agent boxes on
  the 0.1 s grid (`AgentBoxes`, log replay or constant-velocity forecast).

Layers: `geometry` ← `sim` (bicycle, LQR, scorer, PDM-Closed) ← `metrics` (protocols, reports, CLIs).
"""
