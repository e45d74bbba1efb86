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

import numpy as np
from scipy.signal import savgol_filter

from drivedistill.sim.bicycle import S

DECIMALS = 8
CHECKS = ("lon_accel", "lat_accel", "abs_jerk", "lon_jerk", "yaw_rate", "yaw_accel")


def _smooth(signal: np.ndarray, window: int, order: int = 2) -> np.ndarray:
    return np.round(
        savgol_filter(signal, window_length=min(window, signal.shape[-1]), polyorder=order, axis=-1), DECIMALS
    )


def _derivative(signal: np.ndarray, dt: float, window: int, order: int, deriv: int) -> np.ndarray:
    window = min(window, signal.shape[-1])
    return np.round(
        savgol_filter(signal, window_length=window, polyorder=order, deriv=deriv, delta=dt, axis=-1), DECIMALS
    )


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
