"""The default world's ego vehicle as the metrics see it.

highway-env's ego is a 5 m × 2 m box whose pose is its centre. PDMS (NAVSIM) works on the rear axle and
tracks plans with a kinematic bicycle about it, so the world must say where the rear axle of *its*
kinematics is. highway-env moves every vehicle as a kinematic bicycle referenced at the box centre with
l_r = l_f = LENGTH / 2 (slip angle β = atan(½ tan δ), yaw rate v sin β / (LENGTH / 2)): the point
that moves without lateral slip — the rear axle of that model — is LENGTH / 2 = 2.5 m behind the centre,
and the wheelbase is LENGTH = 5 m.

Until 2026-12-07 the world used a Pacifica-like 1.25 m / 2.9 m instead. The "rear-axle" path derived
from the expert's centre poses then slid sideways in every turn (the centre-referenced car rotates about
its centre), which the PDMS tracker's bicycle cannot follow: it cut or overshot the turn, and the
expert's own plans were scored off-road at roundabout and intersection turns (docs/world.md).
"""

from __future__ import annotations

from drivedistill.world.episode import EGO_LENGTH, EGO_WIDTH

REAR_AXLE_BEHIND_CENTRE = EGO_LENGTH / 2  # [m] 2.5: highway-env's l_r
WHEELBASE = EGO_LENGTH  # [m] 5.0: l_r + l_f of highway-env's kinematic bicycle


def pdms_ego_geometry() -> tuple[float, float, float, float]:
    """(width, front length, rear length — both from the rear axle —, wheelbase) [m] for MetricScene."""
    return (
        EGO_WIDTH,
        EGO_LENGTH / 2 + REAR_AXLE_BEHIND_CENTRE,
        EGO_LENGTH / 2 - REAR_AXLE_BEHIND_CENTRE,
        WHEELBASE,
    )
