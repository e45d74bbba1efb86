"""Batch LQR trajectory tracker (NAVSIM v1.1 / nuPlan) and the closed-loop simulation of plans.

Reference profiles: speed and curvature are fitted to the reference poses by regularised least squares
(jerk penalty 1e-4, curvature-rate penalty 1e-2, initial-curvature 1e-10). Each 0.1 s step then solves

- longitudinal: one-step LQR (q = 10, r = 1) on v_N = v_0 + N·dt·a, targeting the reference speed
  N = 10 steps (1 s) ahead;
- lateral: state [lateral error, heading error, steering], q = diag(1, 10, 0), r = 1, the 10-step
  linear time-varying dynamics composed around the speed / curvature profiles;
- a stopping P-controller (gain 0.5, zero steering rate) when reference and current speed ≤ 0.2 m/s.

The commands drive the kinematic bicycle of `sim.bicycle`. Everything is batched over proposals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.geometry.planar import normalize_angle, relative_to_absolute
from drivedistill.sim.bicycle import NUM_STATES, BicycleParams, S, initial_state, propagate


@dataclass(frozen=True)
class LQRParams:
    """Tracker constants of NAVSIM v1.1."""

    q_longitudinal: float = 10.0
    r_longitudinal: float = 1.0
    q_lateral: tuple[float, float, float] = (1.0, 10.0, 0.0)
    r_lateral: float = 1.0
    dt: float = 0.1  # [s]
    horizon: int = 10  # [steps]
    jerk_penalty: float = 1e-4
    curvature_rate_penalty: float = 1e-2
    initial_curvature_penalty: float = 1e-10
    stopping_gain: float = 0.5
    stopping_velocity: float = 0.2  # [m/s]
    bicycle: BicycleParams = field(default_factory=BicycleParams)


def _integrate(initial: np.ndarray, derivatives: np.ndarray, dt: float) -> np.ndarray:
    """Profile (B, M+1) from an initial value (B,) and M derivatives (B, M)."""
    return initial[:, None] + np.pad(np.cumsum(derivatives * dt, axis=-1), [(0, 0), (1, 0)])


def fit_speed_curvature(poses: np.ndarray, p: LQRParams) -> tuple[np.ndarray, np.ndarray]:
    """Speed (B, N-1) [m/s] and curvature (B, N-1) [1/m] profiles fitted to poses (B, N, 3) at dt."""
    dt = p.dt
    diff = np.diff(poses, axis=1)
    xy_disp = diff[..., :2]  # (B, M, 2)
    heading_disp = normalize_angle(diff[..., 2])  # (B, M)
    b, m = heading_disp.shape
    # speed: unknowns [v0, a_0 .. a_{M-2}]; displacement_i = dt·v0 + dt²·Σ_{j<i} a_j along heading_i
    headings = poses[:, :-1, 2]
    col = np.stack([np.cos(headings), np.sin(headings)], axis=-1).reshape(b, 2 * m)  # (B, 2M)
    lower = np.repeat(np.tril(np.ones((m, m)), k=0), 2, axis=0)  # (2M, M)
    a_mat = col[:, :, None] * dt**2 * lower[None]
    a_mat[..., 0] = col * dt
    band = np.zeros((m - 2, m))
    band[:, 2:] += np.eye(m - 2)
    band[:, 1:-1] -= np.eye(m - 2)
    reg = p.jerk_penalty * band.T @ band
    a_t = a_mat.transpose(0, 2, 1)
    sol = np.linalg.solve(a_t @ a_mat + reg, (a_t @ xy_disp.reshape(b, 2 * m)[..., None]))[..., 0]
    speed = _integrate(sol[:, 0], sol[:, 1:], dt)  # (B, M)
    # curvature: unknowns [κ0, κ̇_0 .. κ̇_{M-2}]; heading_disp_i = v_i·dt·(κ0 + dt·Σ_{j<i} κ̇_j)
    c_mat = np.repeat(np.tril(np.ones((m, m)))[None], b, axis=0)
    c_mat[:, :, 0] = speed * dt
    c_mat[:, 1:, 1:] *= (speed[:, 1:] * dt**2)[:, :, None]
    q = p.curvature_rate_penalty * np.eye(m)
    q[0, 0] = p.initial_curvature_penalty
    c_t = c_mat.transpose(0, 2, 1)
    sol = np.linalg.solve(c_t @ c_mat + q, (c_t @ heading_disp[..., None]))[..., 0]
    curvature = _integrate(sol[:, 0], sol[:, 1:], dt)
    return speed, curvature


def _lateral_command(
    lat_state: np.ndarray, speeds: np.ndarray, curvatures: np.ndarray, p: LQRParams
) -> np.ndarray:
    """Steering rate (B,) from the lateral state (B, 3) and horizon profiles speeds, curvatures (B, H)."""
    b, h = speeds.shape
    dt, wheelbase = p.dt, p.bicycle.wheelbase
    a_acc = np.tile(np.eye(3), (b, 1, 1))
    b_acc = np.zeros((b, 3))
    g_acc = np.zeros((b, 3))
    for k in range(h):
        step = np.tile(np.eye(3), (b, 1, 1))
        step[:, 0, 1] = speeds[:, k] * dt
        step[:, 1, 2] = speeds[:, k] * dt / wheelbase
        affine = np.zeros((b, 3))
        affine[:, 1] = -speeds[:, k] * curvatures[:, k] * dt
        a_acc = step @ a_acc
        b_acc = np.einsum("bij,bj->bi", step, b_acc)
        b_acc[:, 2] += dt
        g_acc = np.einsum("bij,bj->bi", step, g_acc) + affine
    err = np.einsum("bij,bj->bi", a_acc, lat_state) + g_acc
    err[:, 1:] = normalize_angle(err[:, 1:])
    q = np.asarray(p.q_lateral)
    bq = b_acc * q
    return -(bq * err).sum(-1) / ((bq * b_acc).sum(-1) + p.r_lateral)


def track(reference: np.ndarray, start: np.ndarray, p: LQRParams) -> np.ndarray:
    """Simulate tracking of reference poses (B, N, 3) from start states (B, NUM_STATES) → states (B, N, NUM_STATES)."""
    b, n, _ = reference.shape
    speed_prof, curv_prof = fit_speed_curvature(reference, p)
    num_prof = speed_prof.shape[1]
    states = np.zeros((b, n, NUM_STATES))
    states[:, 0] = start
    for i in range(n - 1):
        cur = states[:, i]
        ref_idx = min(i + p.horizon, num_prof - 1)
        v_ref = speed_prof[:, ref_idx]
        curv = np.empty((b, p.horizon))
        length = ref_idx - i
        curv[:, :length] = curv_prof[:, i:ref_idx]
        curv[:, length:] = curv_prof[:, ref_idx, None]
        ref_pose = reference[:, i]
        dx, dy = cur[:, S.X] - ref_pose[:, 0], cur[:, S.Y] - ref_pose[:, 1]
        lat_err = -dx * np.sin(ref_pose[:, 2]) + dy * np.cos(ref_pose[:, 2])
        head_err = normalize_angle(cur[:, S.HEADING] - ref_pose[:, 2])
        v0 = cur[:, S.VELOCITY_X]

        commands = np.zeros((b, 2))
        stop = (v_ref <= p.stopping_velocity) & (v0 <= p.stopping_velocity)
        commands[stop, 0] = -p.stopping_gain * (v0[stop] - v_ref[stop])
        go = ~stop
        if go.any():
            gain = p.horizon * p.dt  # v_N = v_0 + N·dt·a
            accel = (
                -gain
                * p.q_longitudinal
                * (v0[go] - v_ref[go])
                / (gain * p.q_longitudinal * gain + p.r_longitudinal)
            )
            commands[go, 0] = accel
            speeds = v0[go, None] + np.arange(p.horizon) * p.dt * accel[:, None]
            lat_state = np.stack([lat_err[go], head_err[go], cur[go, S.STEERING_ANGLE]], axis=-1)
            commands[go, 1] = _lateral_command(lat_state, speeds, curv[go], p)
        states[:, i + 1] = propagate(cur, commands, p.dt, p.bicycle)
    return states


def plans_to_reference(
    plans: np.ndarray, ego_pose: np.ndarray, plan_dt: float = 0.5, num_steps: int = 41, dt: float = 0.1
) -> np.ndarray:
    """Reference poses (B, num_steps, 3) at `dt` from plans (B, T, 3) in the rear-axle frame of `ego_pose` (3,).

    The current pose is prepended at t = 0; x, y are linear in time, heading is unwrapped then linear;
    times past the plan's end hold its last pose (a shorter plan stops).
    """
    b, t, _ = plans.shape
    absolute = relative_to_absolute(ego_pose, plans)
    poses = np.concatenate([np.broadcast_to(ego_pose, (b, 1, 3)), absolute], axis=1)
    poses[..., 2] = np.unwrap(poses[..., 2], axis=1)
    knots = np.arange(t + 1) * plan_dt
    times = np.minimum(np.arange(num_steps) * dt, knots[-1])
    idx = np.clip(np.searchsorted(knots, times, side="right") - 1, 0, t - 1)
    frac = (times - knots[idx]) / plan_dt
    out = poses[:, idx] + frac[None, :, None] * (poses[:, idx + 1] - poses[:, idx])
    out[..., 2] = normalize_angle(out[..., 2])
    return out


def simulate_plans(
    scene: MetricScene, plans: np.ndarray, p: LQRParams | None = None, num_steps: int = 41
) -> np.ndarray:
    """Closed-loop states (B, num_steps, NUM_STATES) of plans (B, T, 3) at 0.5 s, rear-axle frame of `scene.ego_pose`.

    The ego starts from its logged state (speed, acceleration, steering) with the scene's wheelbase.
    """
    p = p or LQRParams(bicycle=BicycleParams(wheelbase=scene.wheelbase))
    speed, accel, steering, _ = (float(v) for v in scene.ego_dynamics)
    start = initial_state(scene.ego_pose, speed, accel, steering, p.bicycle.wheelbase)
    reference = plans_to_reference(
        np.asarray(plans, np.float64), scene.ego_pose, num_steps=num_steps, dt=p.dt
    )
    return track(reference, np.broadcast_to(start, (len(reference), NUM_STATES)), p)
