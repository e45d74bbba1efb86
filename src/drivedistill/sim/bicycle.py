"""Batch kinematic bicycle model about the rear axle, with first-order command lags (NAVSIM v1.1).

State arrays are (B, NUM_STATES) float64 with the layout of `S` (rear-axle quantities, body frame for
velocities/accelerations, the pose in the scoring frame). Commands are (B, 2): acceleration [m/s²] and
steering rate [rad/s]. One step is explicit Euler with dt = 0.1 s by default:

1. lag the commands: a ← a + dt/(dt+τ_a)·(a_cmd − a);  δ_ideal = δ + dt·δ̇_cmd, δ̇ ← dt/(dt+τ_δ)·(δ_ideal − δ)/dt
2. integrate x, y, yaw with the *old* speed, heading and steering; v ← v + a·dt; δ ← clip(δ + δ̇·dt, ±π/3)
3. yaw rate = v·tan δ / L from the new state; yaw acceleration by finite difference.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from drivedistill.geometry.planar import normalize_angle


class S(enum.IntEnum):
    """Indices into a state vector."""

    X = 0  # [m] rear axle
    Y = 1
    HEADING = 2  # [rad]
    VELOCITY_X = 3  # [m/s] longitudinal speed of the rear axle
    VELOCITY_Y = 4  # [m/s] always 0 in the kinematic model
    ACCELERATION_X = 5  # [m/s²] longitudinal
    ACCELERATION_Y = 6  # [m/s²] always 0 in the kinematic model (so v1.1's lateral comfort check never fires)
    STEERING_ANGLE = 7  # [rad]
    STEERING_RATE = 8  # [rad/s]
    ANGULAR_VELOCITY = 9  # [rad/s]
    ANGULAR_ACCELERATION = 10  # [rad/s²]


NUM_STATES = len(S)
_TWO_PI = 2.0 * np.pi


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """`geometry.planar.normalize_angle` (wrap to [-π, π)), bit for bit, for (...) arrays: when every
    angle + π already lies in [0, 2π) the remainder is that value itself (fmod is exact there), so only
    the subtraction is left; otherwise the remainder is taken as normalize_angle takes it."""
    shifted = angle + np.pi
    if shifted.size and shifted.min() >= 0.0 and shifted.max() < _TWO_PI:
        return shifted - np.pi
    return normalize_angle(angle)


@dataclass(frozen=True)
class BicycleParams:
    """Motion-model constants of NAVSIM v1.1 (Chrysler Pacifica wheelbase)."""

    wheelbase: float = 3.089  # [m]
    max_steering_angle: float = np.pi / 3  # [rad]
    accel_time_constant: float = 0.2  # [s]
    steering_time_constant: float = 0.05  # [s]


def initial_state(
    pose: np.ndarray, speed: float, acceleration: float, steering: float, wheelbase: float
) -> np.ndarray:
    """State vector (NUM_STATES,) of the logged ego at t = 0; pose (3,) rear axle [m, m, rad]."""
    state = np.zeros(NUM_STATES)
    state[[S.X, S.Y, S.HEADING]] = pose
    state[S.VELOCITY_X] = speed
    state[S.ACCELERATION_X] = acceleration
    state[S.STEERING_ANGLE] = steering
    state[S.ANGULAR_VELOCITY] = speed * np.tan(steering) / wheelbase
    return state


def propagate(states: np.ndarray, commands: np.ndarray, dt: float, params: BicycleParams) -> np.ndarray:
    """One Euler step. states (B, NUM_STATES), commands (B, 2) [accel m/s², steering rate rad/s] → (B, NUM_STATES)."""
    return propagate_rows(np.ascontiguousarray(states.T), commands[:, 0], commands[:, 1], dt, params).T


def propagate_rows(
    states: np.ndarray, accel_cmd: np.ndarray, steer_rate_cmd: np.ndarray, dt: float, params: BicycleParams
) -> np.ndarray:
    """`propagate` on the transposed layout: states (NUM_STATES, B) → (NUM_STATES, B), commands (B,) each
    (contiguous rows: the simulator's step loop keeps its state this way)."""
    accel = states[S.ACCELERATION_X]
    steer = states[S.STEERING_ANGLE]
    # first-order lags on the commanded acceleration and steering angle
    new_accel = accel + dt / (dt + params.accel_time_constant) * (accel_cmd - accel)
    ideal_steer = steer + dt * steer_rate_cmd
    lagged_steer = steer + dt / (dt + params.steering_time_constant) * (ideal_steer - steer)
    steer_rate = (lagged_steer - steer) / dt

    v = states[S.VELOCITY_X]
    heading = states[S.HEADING]
    out = np.empty_like(states)
    out[S.X] = states[S.X] + v * np.cos(heading) * dt
    out[S.Y] = states[S.Y] + v * np.sin(heading) * dt
    out[S.HEADING] = wrap_angle(heading + v * np.tan(steer) / params.wheelbase * dt)
    out[S.VELOCITY_X] = v + new_accel * dt
    out[S.VELOCITY_Y] = 0.0
    out[S.STEERING_ANGLE] = np.clip(
        steer + steer_rate * dt, -params.max_steering_angle, params.max_steering_angle
    )
    out[S.ANGULAR_VELOCITY] = out[S.VELOCITY_X] * np.tan(out[S.STEERING_ANGLE]) / params.wheelbase
    out[S.ACCELERATION_X] = new_accel
    out[S.ACCELERATION_Y] = 0.0
    out[S.ANGULAR_ACCELERATION] = (out[S.ANGULAR_VELOCITY] - states[S.ANGULAR_VELOCITY]) / dt
    out[S.STEERING_RATE] = steer_rate
    return out
