"""Comfort check of NAVSIM v1.1 on simulated states (Savitzky–Golay filters, strict bounds, 8 decimals).

| check | bound | signal |
|---|---|---|
| longitudinal acceleration | -4.05 < a < 2.40 m/s² | a_x smoothed, window = all samples, order 2 |
| lateral acceleration | |a_y| < 4.89 m/s² | a_y smoothed, same (a_y ≡ 0 in the kinematic model) |
| jerk of |a| | < 8.37 m/s³ | |a| smoothed (window 8), derivative (window = all, order 2) |
| longitudinal jerk | < 4.13 m/s³ | a_x smoothed (window 8), derivative (window = all, order 2) |
| yaw rate | < 0.95 rad/s | unwrapped heading, derivative (window 5, order 2) |
| yaw acceleration | < 1.93 rad/s² | unwrapped heading, 2nd derivative (window 5, order 3) |
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.signal import savgol_filter

from drivedistill.sim.bicycle import S

DECIMALS = 8
CHECKS = ("lon_accel", "lat_accel", "abs_jerk", "lon_jerk", "yaw_rate", "yaw_accel")


@functools.lru_cache(maxsize=64)
def _savgol_operator(n: int, window: int, order: int, deriv: int, delta: float) -> np.ndarray:
    """(n, n) matrix K with savgol_filter(x, …, axis=-1) == x @ K for signals of length n: the filter
    (mode "interp": convolution inside, polynomial fit over the first / last window at the edges) is
    linear, so it is built once per signal length by filtering the identity and then applied to a whole
    batch of signals as one matrix product."""
    eye = np.eye(n)
    op = savgol_filter(eye, window_length=window, polyorder=order, deriv=deriv, delta=delta, axis=-1)
    op.setflags(write=False)
    return op


def _savgol(signal: np.ndarray, window: int, order: int, deriv: int = 0, delta: float = 1.0) -> np.ndarray:
    n = signal.shape[-1]
    return np.round(signal @ _savgol_operator(n, min(window, n), order, deriv, float(delta)), DECIMALS)


def _smooth(signal: np.ndarray, window: int, order: int = 2) -> np.ndarray:
    return _savgol(signal, window, order)


def _derivative(signal: np.ndarray, dt: float, window: int, order: int, deriv: int) -> np.ndarray:
    return _savgol(signal, window, order, deriv, dt)


def _unwrap_phase(headings: np.ndarray) -> np.ndarray:
    two_pi = 2.0 * np.pi
    adjust = np.zeros_like(headings)
    adjust[..., 1:] = np.cumsum(np.round(np.diff(headings, axis=-1) / two_pi), axis=-1)
    return headings - two_pi * adjust


def comfort_checks(states: np.ndarray, dt: float = 0.1) -> np.ndarray:
    """(B, 6) bool, one column per `CHECKS` entry, for simulated states (B, T, NUM_STATES) at `dt`."""
    n = states.shape[1]
    ax = states[..., S.ACCELERATION_X]
    ay = states[..., S.ACCELERATION_Y]
    lon = _smooth(ax, window=n)
    lat = _smooth(ay, window=n)
    abs_jerk = _derivative(_smooth(np.hypot(ax, ay), window=8), dt, window=n, order=2, deriv=1)
    lon_jerk = _derivative(_smooth(ax, window=8), dt, window=n, order=2, deriv=1)
    heading = _unwrap_phase(states[..., S.HEADING])
    yaw_rate = _derivative(heading, dt, window=5, order=2, deriv=1)
    yaw_accel = _derivative(heading, dt, window=5, order=3, deriv=2)
    return _within_bounds(lon, lat, abs_jerk, lon_jerk, yaw_rate, yaw_accel)


# ----- NAVSIM v2 (EPDMS): history comfort (HC) and two-frame extended comfort (EC) -----------------
# navsim/planning/simulation/planner/pdm_planner/scoring/pdm_comfort_metrics.py (v2.x): longitudinal and
# lateral acceleration are taken at the box centre (rigid-body shift of the rear-axle acceleration by
# d·(ω² + ω̇) along x) and smoothed with a window of 8; jerks differentiate with a window of 15.
EC_THRESHOLDS = {"acceleration": 0.7, "jerk": 0.5, "yaw_rate": 0.1, "yaw_accel": 0.1}  # RMS of differences


def _center_accel(states: np.ndarray, rear_axle_to_center: float) -> tuple[np.ndarray, np.ndarray]:
    """(a_x, a_y) at the box centre from rear-axle states, as NAVSIM v2's rigid-body shift computes them."""
    w, dw = states[..., S.ANGULAR_VELOCITY], states[..., S.ANGULAR_ACCELERATION]
    ax = states[..., S.ACCELERATION_X] + rear_axle_to_center * (w**2 + dw)
    return ax, states[..., S.ACCELERATION_Y]


def comfort_checks_v2(states: np.ndarray, rear_axle_to_center: float, dt: float = 0.1) -> np.ndarray:
    """(B, 6) bool per `CHECKS` entry with NAVSIM v2's filters (same bounds as v1.1) on (B, T, NUM_STATES)."""
    n = states.shape[1]
    ax_c, ay_c = _center_accel(states, rear_axle_to_center)
    lon = _smooth(ax_c, window=8)
    lat = _smooth(ay_c, window=8)
    mag = np.hypot(states[..., S.ACCELERATION_X], states[..., S.ACCELERATION_Y])
    abs_jerk = _derivative(_smooth(mag, window=8), dt, window=min(15, n), order=2, deriv=1)
    lon_jerk = _derivative(lon, dt, window=min(15, n), order=2, deriv=1)
    heading = _unwrap_phase(states[..., S.HEADING])
    yaw_rate = _derivative(heading, dt, window=5, order=2, deriv=1)
    yaw_accel = _derivative(heading, dt, window=5, order=3, deriv=2)
    return _within_bounds(lon, lat, abs_jerk, lon_jerk, yaw_rate, yaw_accel)


def _ec_features(states: np.ndarray, dt: float) -> dict[str, np.ndarray]:
    n = states.shape[1]
    mag = _smooth(np.hypot(states[..., S.ACCELERATION_X], states[..., S.ACCELERATION_Y]), window=8)
    heading = _unwrap_phase(states[..., S.HEADING])
    return {
        "acceleration": mag,
        "jerk": _derivative(mag, dt, window=min(15, n), order=2, deriv=1),
        "yaw_rate": _derivative(heading, dt, window=5, order=2, deriv=1),
        "yaw_accel": _derivative(heading, dt, window=5, order=2, deriv=2),  # v2 passes poly order 2 here
    }


def extended_comfort(
    current: np.ndarray, previous: np.ndarray, interval: float = 0.5, dt: float = 0.1
) -> np.ndarray:
    """EC (B,) ∈ {0, 1}: the simulated states (B, T, NUM_STATES) of this frame's plan and of the plan made
    `interval` s earlier agree on their overlap — RMS differences of |a|, jerk, yaw rate and yaw
    acceleration within `EC_THRESHOLDS` (NAVSIM v2 `ego_is_two_frame_extended_comfort`)."""
    shift = round(interval / dt)
    cur = _ec_features(current[:, :-shift], dt)
    prev = _ec_features(previous[:, shift:], dt)
    ok = np.ones(current.shape[0], bool)
    for name, bound in EC_THRESHOLDS.items():
        ok &= np.sqrt(np.mean((cur[name] - prev[name]) ** 2, axis=-1)) <= bound
    return ok.astype(np.float64)


def _within_bounds(
    lon: np.ndarray,
    lat: np.ndarray,
    abs_jerk: np.ndarray,
    lon_jerk: np.ndarray,
    yaw_rate: np.ndarray,
    yaw_accel: np.ndarray,
) -> np.ndarray:
    """(..., 6) bool: each comfort signal (..., T) within nuPlan's bounds at every step."""
    return np.stack(
        [
            ((lon > -4.05) & (lon < 2.40)).all(-1),
            (np.abs(lat) < 4.89).all(-1),
            (np.abs(abs_jerk) < 8.37).all(-1),
            (np.abs(lon_jerk) < 4.13).all(-1),
            (np.abs(yaw_rate) < 0.95).all(-1),
            (np.abs(yaw_accel) < 1.93).all(-1),
        ],
        axis=-1,
    )
