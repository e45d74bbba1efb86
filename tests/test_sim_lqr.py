"""LQR tracker + kinematic bicycle: tracking accuracy and the motion model's constants."""

from __future__ import annotations

import numpy as np

from drivedistill.sim.bicycle import BicycleParams, S, initial_state, propagate
from drivedistill.sim.lqr import plans_to_reference, simulate_plans
from drivedistill.sim.scenarios import straight_plan, straight_road_scene


def test_tracks_a_straight_constant_speed_plan_within_a_few_cm() -> None:
    scene = straight_road_scene(speed=10.0)
    states = simulate_plans(scene, straight_plan(10.0)[None])
    reference = plans_to_reference(straight_plan(10.0)[None], scene.ego_pose)
    assert states.shape == (1, 41, len(S))
    err = np.hypot(states[0, :, S.X] - reference[0, :, 0], states[0, :, S.Y] - reference[0, :, 1])
    assert err.max() < 0.05
    assert np.abs(states[0, :, S.VELOCITY_X] - 10.0).max() < 0.05


def test_tracks_a_lateral_offset_and_a_stop() -> None:
    scene = straight_road_scene(speed=10.0)
    states = simulate_plans(scene, np.stack([straight_plan(10.0, y=1.0), straight_plan(10.0, accel=-3.0)]))
    assert abs(states[0, -1, S.Y] - 1.0) < 0.3  # converged to the offset lane by 4 s
    assert states[1, -1, S.VELOCITY_X] < 0.5  # stopped


def test_short_plans_hold_their_last_pose() -> None:
    ref = plans_to_reference(straight_plan(10.0)[None, :4], np.zeros(3))
    assert np.allclose(ref[0, 20:, 0], 20.0)


def test_bicycle_lags_and_steering_bound() -> None:
    p = BicycleParams()
    state = initial_state(np.zeros(3), 10.0, 0.0, 0.0, p.wheelbase)[None]
    out = propagate(state, np.array([[3.0, 0.0]]), 0.1, p)
    assert np.isclose(out[0, S.ACCELERATION_X], 3.0 * 0.1 / 0.3)  # τ_a = 0.2 s
    assert np.isclose(out[0, S.X], 1.0)  # old speed integrates the position
    for _ in range(100):
        state = propagate(state, np.array([[0.0, 5.0]]), 0.1, p)
    assert np.isclose(state[0, S.STEERING_ANGLE], np.pi / 3)
