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

import functools
from dataclasses import dataclass, field

import numpy as np

from drivedistill.geometry.metric_scene import MetricScene
from drivedistill.geometry.planar import normalize_angle, relative_to_absolute
from drivedistill.sim.bicycle import NUM_STATES, BicycleParams, S, initial_state, propagate_rows, wrap_angle


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
    m = heading_disp.shape[1]
    # speed: unknowns [v0, a_0 .. a_{M-2}]; displacement_i = dt·v0 + dt²·Σ_{j<i} a_j along heading_i
    # Each displacement is observed along its heading's unit vector u_i, so the normal matrix AᵀA of the
    # least-squares fit does not depend on the headings (uᵢ·uᵢ = 1): one (M, M) system for the whole
    # batch, right-hand sides Aᵀd = E·(uᵢ·dᵢ) with E the heading-free design matrix.
    headings = poses[:, :-1, 2]
    along = np.cos(headings) * xy_disp[..., 0] + np.sin(headings) * xy_disp[..., 1]  # (B, M)
    design = dt**2 * np.tril(np.ones((m, m)))
    design[:, 0] = dt
    band = np.zeros((m - 2, m))
    band[:, 2:] += np.eye(m - 2)
    band[:, 1:-1] -= np.eye(m - 2)
    reg = p.jerk_penalty * band.T @ band
    sol = np.linalg.solve(design.T @ design + reg, (along @ design).T).T
    speed = _integrate(sol[:, 0], sol[:, 1:], dt)  # (B, M)
    # curvature: unknowns [κ0, κ̇_0 .. κ̇_{M-2}]; heading_disp_i = v_i·dt·(κ0 + dt·Σ_{j<i} κ̇_j), penalties
    # 1e-10·κ0² + 1e-2·Σ κ̇_j². In the curvatures κ_i = κ0 + dt·Σ_{j<i} κ̇_j themselves (an invertible change of
    # variables: κ̇_j = (κ_{j+1} − κ_j)/dt) the data term is diagonal and the rate penalty a first
    # difference, so the normal equations are tridiagonal and symmetric positive definite:
    #   (diag((v·dt)²) + 1e-10·e₀e₀ᵀ + 1e-2/dt²·DᵀD) κ = v·dt·Δheading,
    # solved per plan in O(M) (the same minimiser as the dense least-squares fit).
    weight = speed * dt
    rate = p.curvature_rate_penalty / dt**2
    diag = weight**2 + 2.0 * rate
    diag[:, 0] += p.initial_curvature_penalty - rate
    diag[:, -1] -= rate
    curvature = _solve_symmetric_tridiagonal(diag, -rate, weight * heading_disp)
    return speed, curvature


def _solve_symmetric_tridiagonal(diag: np.ndarray, off: float, rhs: np.ndarray) -> np.ndarray:
    """Solve (B, M) systems with diagonal `diag` (B, M) and constant off-diagonal `off`, right-hand sides
    `rhs` (B, M): LDLᵀ elimination without pivoting (stable for symmetric positive definite matrices),
    vectorised over the batch."""
    m = diag.shape[1]
    d = np.empty_like(diag)
    y = np.empty_like(rhs)
    d[:, 0], y[:, 0] = diag[:, 0], rhs[:, 0]
    for i in range(1, m):
        f = off / d[:, i - 1]
        d[:, i] = diag[:, i] - f * off
        y[:, i] = rhs[:, i] - f * y[:, i - 1]
    x = np.empty_like(rhs)
    x[:, -1] = y[:, -1] / d[:, -1]
    for i in range(m - 2, -1, -1):
        x[:, i] = (y[:, i] - off * x[:, i + 1]) / d[:, i]
    return x


def _lateral_command(
    lat_state: np.ndarray, speeds: np.ndarray, curvatures: np.ndarray, p: LQRParams
) -> np.ndarray:
    """Steering rate (B,) from the lateral state (B, 3) and horizon profiles speeds, curvatures (B, H)."""
    b, h = speeds.shape
    dt, wheelbase = p.dt, p.bicycle.wheelbase
    # The one-step matrices are unit upper-triangular [[1, v·dt, 0], [0, 1, v·dt/L], [0, 0, 1]], so their
    # product and the input / affine accumulators follow first-order recurrences x_k = x_{k-1} + u_k, run
    # as cumulative sums over the horizon (same summation order as the step-by-step products).
    s01 = speeds * dt  # (B, H)
    s12 = speeds * dt / wheelbase
    affine = -speeds * curvatures * dt
    b2 = _horizon_times(h, dt)  # (H,) cumulative input effect on the steering state: (k + 1)·dt
    # one cumulative sum for the three first-order accumulators a12, b1, g1 (rows are independent)
    first = np.cumsum(np.stack([s12, s12 * _shift_right(b2), affine]), axis=-1)  # (3, B, H)
    shifted = np.zeros_like(first)
    shifted[..., 1:] = first[..., :-1]  # x_{k-1}, with x_{-1} = 0
    a02, b0, g0 = np.cumsum(s01 * shifted, axis=-1)[..., -1]
    a01 = np.cumsum(s01, axis=1)[:, -1]
    a12, b1, g1 = first[..., -1]
    l0, l1, l2 = lat_state[:, 0], lat_state[:, 1], lat_state[:, 2]
    err = np.stack([l0 + a01 * l1 + a02 * l2 + g0, l1 + a12 * l2 + g1, l2], axis=-1)
    b_acc = np.stack([b0, b1, np.full(b, b2[-1])], axis=-1)
    err[:, 1:] = normalize_angle(err[:, 1:])
    q = np.asarray(p.q_lateral)
    bq = b_acc * q
    return -(bq * err).sum(-1) / ((bq * b_acc).sum(-1) + p.r_lateral)


def _horizon_times(h: int, dt: float) -> np.ndarray:
    """(H,) cumulative sums of dt over the horizon (the same additions as a running sum)."""
    return np.cumsum(np.full(h, dt))


def _shift_right(x: np.ndarray) -> np.ndarray:
    """x_{k-1} along the last axis, with x_{-1} = 0."""
    out = np.zeros_like(x)
    out[..., 1:] = x[..., :-1]
    return out


@functools.lru_cache(maxsize=8)
def _horizon_sums(h: int) -> tuple[np.ndarray, np.ndarray]:
    """Constant sums over the horizon k = 0 … H−1 used by `_lateral_command_closed_form`:
    scalars (S1, S2, N0, N1, N2, M0, M1, M2) = (Σk, Σk², Σ_{i<k} 1, Σ_{i<k} (i+k), Σ_{i<k} i·k, Σ_{i<k} i,
    Σ_{i<k} i·(i+k), Σ_{i<k} i²·k), and the (H, 5) weights of the curvature moments
    (Σκ_k, Σk·κ_k, Σ_{i<k} κ_i, Σ_{i<k} (i+k)·κ_i, Σ_{i<k} i·k·κ_i)."""
    k = np.arange(h, dtype=np.float64)
    i, j = np.meshgrid(k, k, indexing="ij")
    lower = i < j  # pairs i < k (j plays k)
    scalars = np.array(
        [
            k.sum(),
            (k**2).sum(),
            lower.sum(),
            ((i + j) * lower).sum(),
            (i * j * lower).sum(),
            (i * lower).sum(),
            (i * (i + j) * lower).sum(),
            (i**2 * j * lower).sum(),
        ]
    )
    weights = np.stack(
        [
            np.ones(h),
            k,
            lower.sum(1),
            ((i + j) * lower).sum(1),
            (i * j * lower).sum(1),
        ],
        axis=-1,
    )
    return scalars, weights


def _lateral_command_closed_form(
    lat_state: np.ndarray, v0: np.ndarray, accel: np.ndarray, moments: np.ndarray, p: LQRParams
) -> np.ndarray:
    """`_lateral_command` for the horizon speeds v_k = v0 + k·dt·accel, in closed form.

    The accumulators of `_lateral_command` are sums over k and pairs i < k of products of v_i, v_k and
    κ_i; with v linear in k they are quadratics in (v0, accel) whose coefficients are the constant sums
    of `_horizon_sums` and the curvature moments (B, 5) of the horizon window (`moments`, from the
    weights of `_horizon_sums`). Equal to `_lateral_command` up to float rounding (≈1e-15 relative);
    O(B) work per step instead of O(B·H)."""
    return _steering_rate(lat_state[:, 0], lat_state[:, 1], lat_state[:, 2], v0, accel, moments.T, p)


def _steering_rate(
    l0: np.ndarray,
    l1: np.ndarray,
    l2: np.ndarray,
    v0: np.ndarray,
    accel: np.ndarray,
    moments: np.ndarray,
    p: LQRParams,
) -> np.ndarray:
    """`_lateral_command_closed_form` on separate (B,) arrays: lateral state l0, l1, l2 (lateral error,
    heading error, steering angle), speed v0, acceleration; the curvature moments as rows (5, B)."""
    k0, k1, kg0, kg1, kg2 = moments
    c, wheelbase, h = p.dt, p.bicycle.wheelbase, p.horizon
    (s1, s2, n0, n1, n2, m0, m1, m2), _ = _horizon_sums(h)
    ca = c * accel
    vv, va, aa = v0 * v0, v0 * ca, ca * ca
    total = h * v0 + ca * s1  # Σ v_k
    a01 = c * total
    a12 = c / wheelbase * total
    a02 = c * c / wheelbase * (vv * n0 + va * n1 + aa * n2)
    b1 = c * c / wheelbase * (v0 * s1 + ca * s2)
    b0 = c**3 / wheelbase * (vv * m0 + va * m1 + aa * m2)
    b2 = h * c
    g1 = -c * (v0 * k0 + ca * k1)
    g0 = -c * c * (vv * kg0 + va * kg1 + aa * kg2)
    e0 = l0 + a01 * l1 + a02 * l2 + g0
    e1 = wrap_angle(l1 + a12 * l2 + g1)
    e2 = wrap_angle(l2)
    q0, q1, q2 = p.q_lateral
    num = q0 * b0 * e0 + q1 * b1 * e1 + q2 * b2 * e2
    den = q0 * b0 * b0 + q1 * b1 * b1 + q2 * b2 * b2 + p.r_lateral
    return -num / den


def track(reference: np.ndarray, start: np.ndarray, p: LQRParams) -> np.ndarray:
    """Simulate tracking of reference poses (B, N, 3) from start states (B, NUM_STATES) → states (B, N, NUM_STATES).

    Everything that does not depend on the simulated state (reference speed and curvature windows of
    each step, the reference poses' sines / cosines) is gathered once before the step loop."""
    b, n, _ = reference.shape
    speed_prof, curv_prof = fit_speed_curvature(reference, p)
    num_prof = speed_prof.shape[1]
    steps = np.arange(n - 1)
    ref_idx = np.minimum(steps + p.horizon, num_prof - 1)  # (N-1,) the speed target 1 s ahead
    # curvature over the horizon: the profile from step i, held at its value at ref_idx
    window = np.minimum(steps[:, None] + np.arange(p.horizon)[None], ref_idx[:, None])  # (N-1, H)
    # step-major copies: each step reads contiguous (B,) rows
    v_refs = np.ascontiguousarray(speed_prof[:, ref_idx].T)  # (N-1, B)
    # (N-1, 5, B) curvature moments of each step's horizon window
    moments = np.ascontiguousarray((curv_prof[:, window] @ _horizon_sums(p.horizon)[1]).transpose(1, 2, 0))
    ref_x, ref_y, ref_h = (np.ascontiguousarray(reference[..., k].T) for k in range(3))  # (N, B)
    sin_ref, cos_ref = np.sin(ref_h), np.cos(ref_h)
    gain = p.horizon * p.dt  # v_N = v_0 + N·dt·a
    states = np.zeros((n, NUM_STATES, b))  # step-major, each state a contiguous row of the batch
    states[0] = start.T
    for i in range(n - 1):
        cur = states[i]
        v_ref = v_refs[i]
        dx, dy = cur[S.X] - ref_x[i], cur[S.Y] - ref_y[i]
        lat_err = -dx * sin_ref[i] + dy * cos_ref[i]
        head_err = wrap_angle(cur[S.HEADING] - ref_h[i])
        v0 = cur[S.VELOCITY_X]
        stop = (v_ref <= p.stopping_velocity) & (v0 <= p.stopping_velocity)
        if not stop.any():  # the common case: every plan tracked by the LQR
            accel_cmd = (
                -gain * p.q_longitudinal * (v0 - v_ref) / (gain * p.q_longitudinal * gain + p.r_longitudinal)
            )
            steer_cmd = _steering_rate(lat_err, head_err, cur[S.STEERING_ANGLE], v0, accel_cmd, moments[i], p)
        else:
            accel_cmd = np.zeros(b)
            steer_cmd = np.zeros(b)
            accel_cmd[stop] = -p.stopping_gain * (v0[stop] - v_ref[stop])
            go = ~stop
            if go.any():
                accel = (
                    -gain
                    * p.q_longitudinal
                    * (v0[go] - v_ref[go])
                    / (gain * p.q_longitudinal * gain + p.r_longitudinal)
                )
                accel_cmd[go] = accel
                steer_cmd[go] = _steering_rate(
                    lat_err[go], head_err[go], cur[S.STEERING_ANGLE, go], v0[go], accel, moments[i][:, go], p
                )
        states[i + 1] = propagate_rows(cur, accel_cmd, steer_cmd, p.dt, p.bicycle)
    return np.ascontiguousarray(states.transpose(2, 0, 1))


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
