"""Bird's-eye plot of a MetricScene with plans (matplotlib, Agg): map polygons, route, agents, plans.

plot_scene(scene, {"human": plan, "pdm_closed": ref}, "scene.png", title="...")
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from drivedistill.metrics.metric_scene import MetricScene
from drivedistill.sim.geometry import box_corners, relative_to_absolute
from drivedistill.types import AgentClass

COLORS = {
    AgentClass.VEHICLE: "tab:blue",
    AgentClass.PEDESTRIAN: "tab:orange",
    AgentClass.BICYCLE: "tab:purple",
    AgentClass.STATIC: "black",
}


def plot_scene(
    scene: MetricScene, plans: dict[str, np.ndarray], path: str | Path, title: str = "", radius: float = 60.0
) -> Path:
    """Write a PNG of the scene around the ego; plans (8, 3) are rear-axle poses relative to `scene.ego_pose`."""
    fig, ax = plt.subplots(figsize=(9, 9))
    for poly in scene.drivable_polygons:
        ax.fill(poly[:, 0], poly[:, 1], color="0.85", zorder=0)
    for poly, on_route in zip(scene.lane_polygons, scene.lane_on_route):
        ax.plot(*np.vstack([poly, poly[:1]]).T, color="tab:green" if on_route else "0.6", lw=0.6, zorder=1)
    for poly in scene.intersection_polygons:
        ax.fill(poly[:, 0], poly[:, 1], color="khaki", alpha=0.4, zorder=1)
    ax.plot(*scene.route.T, "g--", lw=1.2, label="route", zorder=2)
    for k, alpha in ((0, 0.9), (len(scene.agent_times) // 2, 0.3)):
        valid = scene.agent_valid[k]
        corners = box_corners(
            scene.agent_poses[k, valid, :2],
            scene.agent_poses[k, valid, 2],
            scene.agent_sizes[valid, 0],
            scene.agent_sizes[valid, 1],
        )
        for c, cls in zip(corners, scene.agent_types[valid]):
            ax.fill(c[:, 0], c[:, 1], color=COLORS[AgentClass(int(cls))], alpha=alpha, zorder=3)
    ego = scene.ego_pose
    d = scene.rear_axle_to_center
    center = ego[:2] + d * np.array([np.cos(ego[2]), np.sin(ego[2])])
    c = box_corners(center, np.array(ego[2]), scene.front_length + scene.rear_length, scene.width)
    ax.fill(c[:, 0], c[:, 1], color="red", zorder=4, label="ego t=0")
    for (name, plan), color in zip(plans.items(), ("red", "magenta", "cyan", "gold")):
        xy = relative_to_absolute(ego, np.asarray(plan))[:, :2]
        ax.plot(xy[:, 0], xy[:, 1], "o-", color=color, ms=3, label=name, zorder=5)
    ax.set_xlim(ego[0] - radius, ego[0] + radius)
    ax.set_ylim(ego[1] - radius, ego[1] + radius)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or scene.token, fontsize=9)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
