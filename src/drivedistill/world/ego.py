"""The default world's ego vehicle as the metrics see it.

highway-env's ego is a 5 m × 2 m box whose pose is its centre. PDMS (NAVSIM) works on the rear axle,
so the world defines where its rear axle is: 1.25 m behind the box centre (the Chrysler Pacifica's
1.461 m scaled to a 5 m car, rounded), with a 2.9 m wheelbase for the PDMS tracker.
"""

from __future__ import annotations

from drivedistill.world.episode import EGO_LENGTH, EGO_WIDTH

REAR_AXLE_BEHIND_CENTRE = 1.25  # [m]
WHEELBASE = 2.9  # [m]


def pdms_ego_geometry() -> tuple[float, float, float, float]:
    """(width, front length, rear length — both from the rear axle —, wheelbase) [m] for MetricScene."""
    return (
        EGO_WIDTH,
        EGO_LENGTH / 2 + REAR_AXLE_BEHIND_CENTRE,
        EGO_LENGTH / 2 - REAR_AXLE_BEHIND_CENTRE,
        WHEELBASE,
    )
