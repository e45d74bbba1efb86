"""The privileged expert that drives the ego, and the scripted vehicles that stage events.

`ExpertVehicle` is highway-env's IDM + MOBIL driver (lane keeping, route following, lane changes) with a
privileged safety layer on top: every 0.1 s it predicts every nearby vehicle for 3 s at constant speed
and turn rate, predicts itself along its lane/route for a few candidate decelerations, and takes the
mildest candidate that keeps a margin to everyone (or, if none does, the one that delays contact
longest, braking hardest among ties). A vehicle changing lane is predicted both on its current motion
and in its target lane (its intention is privileged state). It reads the true simulator state — that is
what makes it an expert, and why only `Privileged` data carries its plans.

`ScriptedVehicle` is an IDM vehicle whose acceleration or lane can be overridden by an event script.
"""

from __future__ import annotations

import math

import numpy as np

from drivedistill.world.config import SIM_HZ
from drivedistill.world.fastsim import FastIDMVehicle, _wrap

HORIZON = 3.0  # [s] safety look-ahead
PRED_TIMES = np.arange(0.25, HORIZON + 1e-6, 0.25)  # [s]
CANDIDATE_ACCELS = (0.0, -1.5, -3.0, -3.8, -4.5, -6.0, -8.0)  # [m/s^2] tried below the IDM command
MARGIN_X, MARGIN_Y = 2.0, 0.35  # [m] safety margins along / across the ego heading
# [m] margin along the ego heading to a vehicle crossing its path (heading ≥ 30° off the ego's): its
# constant-turn-rate prediction is the least reliable (a car turning at a junction), and a stop the expert
# times to 1 m is one no tracker reproduces (docs/world.md, "late braking at junctions")
MARGIN_X_CROSSING = 4.0  # [m]
SCAN_RADIUS = 70.0  # [m]
DT = 1.0 / SIM_HZ  # [s] control period


def _steering_of(sin_beta: float) -> float:
    """highway-env's steering angle δ [rad] for a slip angle β (its centre-referenced bicycle:
    tan β = tan δ / 2, yaw rate = v·sin β / (L/2))."""
    return math.atan(2 * math.tan(math.asin(sin_beta)))


class ExpertVehicle(FastIDMVehicle):
    """IDM + MOBIL with a privileged constant-turn-rate conflict check (highway-env frame internally)."""

    POLITENESS = 0.2
    LANE_CHANGE_MIN_ACC_GAIN = 0.15
    LANE_CHANGE_MAX_BRAKING_IMPOSED = 1.5
    TIME_WANTED = 1.3
    COMFORT_ACC_MIN = -4.0
    # Comfort (docs/world.md): nuPlan's / NAVSIM's bounds are −4.05 … 2.40 m/s² of longitudinal
    # acceleration; highway-env's IDM accelerates at up to 3 m/s² and brakes beyond its comfortable
    # deceleration when a gap closes. The expert accelerates at ≤ COMFORT_ACC_MAX and brakes harder than
    # SERVICE_BRAKE only when its safety check finds no gentler safe candidate (an emergency).
    COMFORT_ACC_MAX = 2.0
    SERVICE_BRAKE = -3.8  # [m/s^2]
    # Above FAST_SPEED the IDM command brakes at most at FAST_SERVICE_BRAKE: NAVSIM's LQR tracker follows a
    # step to −3.8 m/s² at 15–25 m/s with an overshoot below −4.05 m/s² (comfort C 0 on every cut-in
    # and stopped-car sample that braked at −3.8 on the validation split). At junction speeds a softer IDM
    # brake changed who yields to whom at the roundabout and cost NC and DAC there (docs/world.md), so
    # below FAST_SPEED the IDM brakes at SERVICE_BRAKE as before.
    FAST_SPEED = 12.0  # [m/s]
    FAST_SERVICE_BRAKE = -3.0  # [m/s^2]
    # Lane changes of a human driver rather than highway-env's (0.6 s lateral time constant, up to 45°
    # towards the target lane): at 25 m/s those gains change lane in ~1.5 s with 0.3 rad of heading, a
    # manoeuvre a PDMS tracker (LQR at 10 Hz) cannot follow without overshooting the road edge. Within
    # one straight road edge (lane keeping and lane changes, which end in the same edge) the expert uses a 1.4 s
    # lateral time constant and at most 0.12 rad towards the target lane (~3.5 s per lane change); the
    # hand-over from one edge to the next and curved lanes keep highway-env's stiff gains (the lanes of
    # consecutive edges do not always line up, e.g. roundabout entries; curves need the tight tracking).
    LANE_CHANGE_KP_LATERAL = 1 / 1.4  # [1/s]
    LANE_CHANGE_MAX_HEADING = 0.12  # [rad]
    # Physical driving (docs/world.md): highway-env drives its curves at cruise speed and saturates the
    # steering at ±60° with no steering dynamics — up to 2.5 rad/s of yaw rate at 9.5 m/s (2.4 g) on the
    # racetrack and at roundabout exits. The expert slows for the sharpest bend within CURVE_PREVIEW
    # seconds to CURVE_LATERAL_ACCEL and never steers beyond MAX_LATERAL_ACCEL (a tyre's grip).
    CURVE_LATERAL_ACCEL = 3.0  # [m/s^2]
    CURVE_PREVIEW = 3.0  # [s]
    MAX_LATERAL_ACCEL = 6.0  # [m/s^2]
    # Passing a stopped car in a bend (docs/world.md): a car held straight for 0.9 s (NAVSIM's TTC
    # projection) drifts 0.9²·v²·κ/2 = 0.405·a_lat metres to the outside of the bend — 1.2 m at the 3 m/s²
    # of CURVE_LATERAL_ACCEL, onto a car stopped in the outer lane (`racetrack-s0-e00019`). While it passes
    # a stopped car (PASS_RANGE ahead, on its road, not in its target lane) the expert drives bends at
    # PASS_LATERAL_ACCEL (0.8 m of drift).
    PASS_LATERAL_ACCEL = 2.0  # [m/s^2]
    PASS_RANGE = 40.0  # [m] ahead of the ego
    STOPPED_SPEED = 2.0  # [m/s]
    # A hand-over to a lane of another edge that leaves the ego more than HAND_OVER_OFFSET off its centre
    # (`_hand_over_pursuit`): pure pursuit of the lane centre HAND_OVER_PREVIEW seconds of driving ahead
    # (≥ PURSUIT_MIN_LOOK) until the ego is on it
    HAND_OVER_OFFSET = 0.5  # [m]
    HAND_OVER_PREVIEW = 1.5  # [s]
    PURSUIT_MIN_LOOK = 6.0  # [m]
    _handing_over: tuple[str, str] | None = None
    _previous_target: tuple[str, str, int] | None = None
    target_lane_index: tuple[str, str, int]
    # A recovery push (WorldConfig.perturb, world/episode.py): while `yaw_rate_offset` [rad/s] is not 0 the
    # expert's lateral control is suspended — it holds the steering it had when the push began (so it keeps
    # following a bend it was in) plus this yaw rate — and steers back by itself once it is 0 again.
    yaw_rate_offset: float = 0.0
    _push_steering: float | None = None

    def act(self, action: dict | str | None = None) -> None:
        if self.crashed:
            return
        cruise = float(self.target_speed)  # type: ignore[has-type]
        self.target_speed = min(cruise, self._curve_speed())
        try:
            super().act()
        finally:
            self.target_speed = cruise
        service = self.FAST_SERVICE_BRAKE if self.speed > self.FAST_SPEED else self.SERVICE_BRAKE
        a_idm = max(float(self.action["acceleration"]), service)
        # never brake through zero speed: highway-env integrates into reverse, and a reversing car steers
        # the wrong way
        self.action["acceleration"] = max(self.safe_acceleration(a_idm), -max(float(self.speed), 0.0) / DT)
        steering = float(self.action["steering"])
        if self.yaw_rate_offset:
            if self._push_steering is None:
                self._push_steering = steering
            steering = self._with_yaw_rate(self._push_steering, self.yaw_rate_offset)
        else:
            self._push_steering = None
        self.action["steering"] = self._physical_steering(steering)

    def _with_yaw_rate(self, steering: float, offset: float) -> float:
        """The steering [rad] whose yaw rate is that of `steering` plus `offset` [rad/s] (highway-env's
        centre-referenced bicycle: yaw rate = v·sin β / (L/2), tan β = tan δ / 2)."""
        v = max(float(self.speed), 1.0)
        beta = math.atan(math.tan(steering) / 2)
        return _steering_of(min(max(math.sin(beta) + offset * (self.LENGTH / 2) / v, -0.99), 0.99))

    def _curve_speed(self) -> float:
        """[m/s] the speed at which the sharpest bend of the route within CURVE_PREVIEW seconds (at the
        current speed, ≥ 20 m) is driven at CURVE_LATERAL_ACCEL; inf on straight roads."""
        v = max(float(self.speed), 0.0)
        path = self._ego_path(max(20.0, v * self.CURVE_PREVIEW))
        if len(path) < 6:
            return math.inf
        # curvature of the lane (not of the ego's offset decay): heading change over 6 m windows
        kappa = np.abs(path[4:, 2] - path[:-4, 2]) / 6.0
        k = float(kappa[1:].max()) if len(kappa) > 1 else 0.0
        a_lat = self.PASS_LATERAL_ACCEL if self._stopped_car_ahead() else self.CURVE_LATERAL_ACCEL
        return math.sqrt(a_lat / k) if k > 1e-4 else math.inf

    def _stopped_car_ahead(self) -> bool:
        """A vehicle slower than STOPPED_SPEED within PASS_RANGE ahead on the ego's road but not in the lane
        the ego is heading for — a car the ego passes (not one it queues behind)."""
        c, s = math.cos(self.heading), math.sin(self.heading)
        for v in self.road.vehicles:
            if v is self or v.speed > self.STOPPED_SPEED:
                continue
            d = v.position - self.position
            lon, lat = c * d[0] + s * d[1], -s * d[0] + c * d[1]
            if not -2.0 < lon < self.PASS_RANGE or abs(lat) > 8.0:
                continue
            if v.lane_index[:2] == self.target_lane_index[:2] and v.lane_index != self.target_lane_index:
                return True
        return False

    def _physical_steering(self, steering: float) -> float:
        """Bound highway-env's steering command [rad] so that the lateral acceleration v·yaw rate stays
        ≤ MAX_LATERAL_ACCEL (highway-env's centre-referenced bicycle: yaw rate = v·sin β / (L/2),
        tan β = tan δ / 2); below ~4 m/s the bound is the steering lock."""
        v = max(float(self.speed), 1e-3)
        sin_beta = self.MAX_LATERAL_ACCEL * (self.LENGTH / 2) / (v * v)
        if sin_beta < 1.0:
            limit = _steering_of(sin_beta)
            steering = min(max(steering, -limit), limit)
        return steering

    def steering_control(self, target_lane_index: tuple[str, str, int]) -> float:
        pursuit = self._hand_over_pursuit(target_lane_index)
        if pursuit is not None:
            return pursuit
        same_edge = target_lane_index[:2] == self.lane_index[:2]
        straight = type(self.road.network.get_lane(target_lane_index)).__name__ == "FastStraightLane"
        if not (same_edge and straight):
            return super().steering_control(target_lane_index)
        kp, limit = self.KP_LATERAL, self.MAX_HEADING_OFFSET  # type: ignore[has-type]
        self.KP_LATERAL, self.MAX_HEADING_OFFSET = self.LANE_CHANGE_KP_LATERAL, self.LANE_CHANGE_MAX_HEADING
        try:
            return super().steering_control(target_lane_index)
        finally:
            self.KP_LATERAL, self.MAX_HEADING_OFFSET = kp, limit

    def _hand_over_pursuit(self, target: tuple[str, str, int]) -> float | None:
        """Pure-pursuit steering [rad] after a hand-over to a lane that does not line up with the one the
        ego leaves (a roundabout entry ends 2 m outside the ring lane, ~6 m before its start, at ~60° to
        it), until the ego is on the new lane's centre; None elsewhere.

        highway-env's controller turns onto the new lane's centre at once (0.5 m look-ahead, stiff gains):
        near full lock at the roundabout entry, a corner NAVSIM's tracker overshoots onto the ring's outer
        kerb. Pursuit of the lane centre `look` metres ahead spreads the turn. It starts at the hand-over,
        not before: a turn begun on the entry lane left a yielding expert standing with its nose in the
        ring, where its safety check (which predicts it along its lanes) did not put it (train e87)."""
        net = self.road.network
        lane = net.get_lane(target)
        s, r = lane.local_coordinates(self.position)
        previous, self._previous_target = self._previous_target, target
        if previous is not None and previous[:2] != target[:2] and abs(r) > self.HAND_OVER_OFFSET:
            self._handing_over = target[:2]
        if self._handing_over != target[:2]:
            self._handing_over = None
            return None
        # highway-env's centre-referenced car moves along heading + slip angle β (tan β = tan δ / 2, δ the
        # steering it holds): on a ring β ≈ 0.1 rad, and measured from the heading the pursuit settled
        # ~1 m inside the lane centre, never released, and restarted at every ring edge
        steering = float(self.action.get("steering", 0.0)) if isinstance(self.action, dict) else 0.0
        travel = float(self.heading) + math.atan(math.tan(steering) / 2)
        if abs(r) < 0.3 and abs(_wrap(travel - lane.heading_at(s))) < 0.1:
            self._handing_over = None  # on the lane's centre: highway-env's lane keeping again
            return None
        look = max(self.PURSUIT_MIN_LOOK, self.HAND_OVER_PREVIEW * max(float(self.speed), 1.0))
        d = lane.position(s + look, 0.0) - self.position
        alpha = _wrap(math.atan2(d[1], d[0]) - travel)
        kappa = 2.0 * math.sin(alpha) / max(float(np.hypot(*d)), 1e-3)
        return _steering_of(min(max(kappa * self.LENGTH / 2, -0.99), 0.99))

    def _others(self) -> np.ndarray:
        """(M, 7) x, y, heading, speed, yaw rate, length, width of the vehicles that matter."""
        rows = []
        c, s = math.cos(self.heading), math.sin(self.heading)
        for v in self.road.vehicles:
            if v is self:
                continue
            d = v.position - self.position
            if abs(d[0]) > SCAN_RADIUS or abs(d[1]) > SCAN_RADIUS:
                continue
            rel_x = c * d[0] + s * d[1]
            if rel_x < -1.0 and math.cos(v.heading - self.heading) > 0.7:
                continue  # a follower in our direction: braking for it would only make things worse
            steer = float(v.action.get("steering", 0.0)) if isinstance(v.action, dict) else 0.0
            beta = math.atan(0.5 * math.tan(steer))
            yaw_rate = v.speed * math.sin(beta) / (v.LENGTH / 2)
            target = getattr(v, "target_lane_index", None)
            changing = target is not None and target != v.lane_index and target[:2] == v.lane_index[:2]
            if changing:
                # its turn rate only swings it into the next lane: held for 3 s it would turn a cut-in car
                # across the ego's lane and "stop" it along the ego heading — an emergency stop for a car
                # that is merely slower (8 m/s² on every scripted cut-in); hold its heading instead
                yaw_rate = 0.0
            rows.append((v.position[0], v.position[1], v.heading, v.speed, yaw_rate, v.LENGTH, v.WIDTH))
            if changing and target is not None:
                # a lane change under way (privileged: its target lane): also predict it as if it were
                # already in that lane, so the ego yields before the other car's turn rate shows it
                lane = self.road.network.get_lane(target)
                s_lane = lane.local_coordinates(v.position)[0]
                xy = lane.position(s_lane, 0.0)
                rows.append((xy[0], xy[1], lane.heading_at(s_lane), v.speed, 0.0, v.LENGTH, v.WIDTH))
        return np.array(rows, np.float64).reshape(-1, 7)

    def change_lane_policy(self) -> None:
        """MOBIL, plus: when the lane ahead is blocked by a slow or stopped car, take a safe side lane
        (MOBIL alone never leaves a lane once stopped behind an obstacle)."""
        super().change_lane_policy()
        if self.lane_index != self.target_lane_index:
            return
        front, _ = self.road.neighbour_vehicles(self, self.lane_index)
        if front is None or front.speed > 0.4 * self.target_speed:
            return
        if self.lane_distance_to(front) > 80:
            return
        for lane_index in self.road.network.side_lanes(self.lane_index):
            if not self.road.network.get_lane(lane_index).is_reachable_from(self.position):
                continue
            new_front, new_rear = self.road.neighbour_vehicles(self, lane_index)
            if new_front is not None and self.lane_distance_to(new_front) < 15 + self.speed:
                continue
            if new_rear is not None:
                gap = -self.lane_distance_to(new_rear)
                if gap < 8 + max(0.0, new_rear.speed - self.speed) * 2.0:
                    continue
            self.target_lane_index = lane_index
            return

    def _lane_sequence(self, count: int = 4) -> list[tuple[str, str, int]]:
        """The target lane and the next `count` lanes along the route (or the first successor)."""
        return [self.target_lane_index, *self._lane_sequence_from(self.target_lane_index, count)]

    def _lane_sequence_from(self, start: tuple[str, str, int], count: int) -> list[tuple[str, str, int]]:
        """The next `count` lanes after `start` along the route (or the first successor)."""
        net = self.road.network
        seq = [start]
        route = list(self.route or [])
        for _ in range(count):
            _, to, lane_id = seq[-1]
            nxt = [r for r in route if r[0] == to]
            if nxt:
                edge = (nxt[0][0], nxt[0][1])
            elif net.graph.get(to):
                edge = (to, next(iter(net.graph[to])))
            else:
                break
            seq.append((edge[0], edge[1], min(lane_id, len(net.graph[edge[0]][edge[1]]) - 1)))
        return seq[1:]

    def _ego_path(self, max_dist: float) -> np.ndarray:
        """(P, 3) x, y, heading (unwrapped) sampled every 1.5 m along the target lane / route, from the
        ego on; the ego's lateral offset from the lane decays to zero over 2 s of driving."""
        lanes = [self.road.network.get_lane(i) for i in self._lane_sequence()]
        s, lat0 = lanes[0].local_coordinates(self.position)
        ds = np.arange(1.5, max_dist + 1.5, 1.5)
        s_total = s + ds
        ends = np.cumsum([lane.length for lane in lanes])
        k = np.searchsorted(ends[:-1], s_total, side="left")  # lane holding each sample
        s_local = s_total - np.concatenate([[0.0], ends[:-1]])[k]
        lat = lat0 * np.maximum(0.0, 1.0 - ds / max(self.speed, 2.0) / 2.0)
        pts = np.empty((len(ds) + 1, 3))
        pts[0] = (self.position[0], self.position[1], self.heading)
        for i in np.unique(k).tolist():
            sel = np.flatnonzero(k == i) + 1
            pts[sel, :2] = lanes[i].positions(s_local[sel - 1], lat[sel - 1])
            pts[sel, 2] = lanes[i].headings(s_local[sel - 1])
        pts[:, 2] = np.unwrap(pts[:, 2])
        return pts

    def safe_acceleration(self, a_idm: float) -> float:
        others = self._others()
        if len(others) == 0:
            return a_idm
        t = PRED_TIMES
        # others: constant speed and turn rate
        yaw = others[:, 2:3] + others[:, 4:5] * t
        step_xy = np.stack([np.cos(yaw), np.sin(yaw)], -1) * others[:, 3:4, None] * 0.25
        oxy = others[:, None, :2] + np.cumsum(step_xy, axis=1)  # (M, T, 2)
        v0 = max(self.speed, 0.0)
        path = self._ego_path(v0 * HORIZON + 0.5 * 3.0 * HORIZON**2 + 2.0)
        arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path[:, :2], axis=0).T))])
        # every candidate at once, mildest first: (C, T) ego poses along the path
        acc = np.array(sorted({min(a_idm, a) for a in (a_idm, *CANDIDATE_ACCELS)}, reverse=True))
        t_stop = np.where(acc < 0, v0 / np.maximum(-acc, 1e-9), np.inf)
        tt = np.minimum(t[None, :], t_stop[:, None])
        dist = np.clip(v0 * tt + 0.5 * acc[:, None] * tt**2, 0.0, arc[-1])
        ex, ey, eh = (np.interp(dist, arc, path[:, j]) for j in range(3))
        tc = self._first_conflict(ex, ey, eh, oxy, yaw, others)  # (C,), inf = no conflict
        free = np.flatnonzero(np.isinf(tc))
        if len(free):
            return float(acc[free[0]])
        return float(acc[np.flatnonzero(tc >= tc.max() - 1e-6)[-1]])  # latest contact; ties: hardest

    def _first_conflict(
        self,
        ex: np.ndarray,
        ey: np.ndarray,
        eh: np.ndarray,
        oxy: np.ndarray,
        oyaw: np.ndarray,
        others: np.ndarray,
    ) -> np.ndarray:
        """(C,) earliest time [s] at which an other's box comes within the margins of the ego box, per
        candidate (ego poses ex, ey, eh (C, T); others' centres oxy (M, T, 2), yaws (M, T)); inf = never."""
        dx = oxy[None, ..., 0] - ex[:, None, :]  # (C, M, T)
        dy = oxy[None, ..., 1] - ey[:, None, :]
        c, s = np.cos(eh)[:, None, :], np.sin(eh)[:, None, :]
        lon = c * dx + s * dy
        lat = -s * dx + c * dy
        rel = oyaw[None] - eh[:, None, :]
        half_l, half_w = others[None, :, 5:6] / 2, others[None, :, 6:7] / 2
        ext_x = half_l * np.abs(np.cos(rel)) + half_w * np.abs(np.sin(rel))
        ext_y = half_l * np.abs(np.sin(rel)) + half_w * np.abs(np.cos(rel))
        margin_x = np.where(np.abs(np.sin(rel)) > 0.5, MARGIN_X_CROSSING, MARGIN_X)
        hit = (np.abs(lon) < self.LENGTH / 2 + ext_x + margin_x) & (
            np.abs(lat) < self.WIDTH / 2 + ext_y + MARGIN_Y
        )
        any_t = hit.any(axis=1)  # (C, T)
        return np.where(any_t.any(axis=1), PRED_TIMES[np.argmax(any_t, axis=1)], np.inf)


class ScriptedVehicle(FastIDMVehicle):
    """IDM vehicle whose acceleration can be overridden (`override_accel`, [m/s^2]) by an event."""

    override_accel: float | None = None

    def act(self, action: dict | str | None = None) -> None:
        if self.crashed:
            return
        super().act()
        if self.override_accel is not None:
            self.action["acceleration"] = self.override_accel
