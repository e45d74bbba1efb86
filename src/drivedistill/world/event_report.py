"""Per-event-family evaluation: where perception decides, and how every model does there.

Every world sample carries an event family (`Privileged.event`, store column `event`; labelled in
`world/episode.py`): the scripted or natural event active in the sample's 4 s future window —

    lead_brake, stopped_vehicle, cut_in, stop_and_go, cross_traffic   (scripted, see world/events.py)
    slow_vehicle   the expert changes lane to pass a slower car ahead (what MOBIL/the blocked-lane rule do)
    curve          the expert's 4 s future turns by more than `CURVE_YAW` rad
    lane_follow    none of the above (ego status predicts the plan well)

The first seven are *events*: something the camera or the LiDAR shows and the ego status does not —
*once it has begun*. A sample's window can open before its event starts (the lead brakes 2 s after t0):
then nothing at t0 reveals it. `meta["event_onset_s"]` (world/episode.py, WORLD_CODE_VERSION 4) says
when the event starts; `visible_at_t0(scene)` is True for an event already active at t0 and for a curve
(the bend is in view). Every family reports `at_t0` (the fraction visible at t0), and the aggregate
family "events_at_t0" holds the event samples visible at t0 — the ones where a camera/LiDAR student
can beat an ego-status one at all. Stores without the onset (older world code) leave both out.

- `departs_from_cv(scene)`: does the expert's plan differ from constant velocity and yaw rate (the
  `constant_velocity` row's arc) by more than `DEPART_M` metres at some step of the 4 s horizon?
- `sample_l2(plans, scenes)`: per-sample L2 [m] averaged over the 1, 2, 3 s horizons (the UniAD-style
  per-horizon L2 at 2 Hz, averaged), box-centre poses, current ego frame.
- `event_metrics(scenes, plans, pdms_scenes)`: per family {num_samples, fraction, l2_m, pdms[, nc, dac]}
  for one model — what `pipeline/evaluation.py` writes into each row's "per_event" block.
- `expert_departure(scenes)`: per family the fraction of samples whose expert plan departs from CV.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from drivedistill.types import DT, NUM_FUTURE, Scene

EVENT_FAMILIES = (
    "lead_brake",
    "stopped_vehicle",
    "cut_in",
    "stop_and_go",
    "cross_traffic",
    "slow_vehicle",
    "curve",
    "lane_follow",
)
NON_EVENT = "lane_follow"
DEPART_M = 2.0  # [m] expert-vs-constant-velocity difference that counts as "the plan differs"
L2_STEPS = (1, 3, 5)  # indices of t = 1, 2, 3 s on the 0.5 s grid
PROTOCOL = "drivedistill-events-v1"


def family_of(scene: Scene) -> str:
    """The sample's event family (privileged label; falls back to meta["event"]); "" if unknown."""
    if scene.privileged is not None and scene.privileged.event:
        return scene.privileged.event
    return str(scene.meta.get("event", "") or "")


def cv_arc(speed: float, yaw_rate: float, num_steps: int = NUM_FUTURE) -> np.ndarray:
    """(num_steps, 3) constant speed [m/s] and yaw rate [rad/s] arc at 0.5 s steps (ego frame)."""
    t = DT * np.arange(1, num_steps + 1)
    yaw = yaw_rate * t
    if abs(yaw_rate) < 1e-6:
        return np.stack([speed * t, np.zeros_like(t), yaw], 1)
    return np.stack([speed * np.sin(yaw) / yaw_rate, speed * (1 - np.cos(yaw)) / yaw_rate, yaw], 1)


def departs_from_cv(scene: Scene, threshold: float = DEPART_M) -> bool:
    """True when the expert's 4 s plan is more than `threshold` metres from the constant-velocity arc at
    some valid step (the arc uses the sample's ego status: speed and yaw rate)."""
    pv = scene.privileged
    if pv is None:
        raise ValueError(f"scene {scene.token}: departs_from_cv needs the privileged future")
    speed, _, yaw_rate = (float(v) for v in scene.agent_input.ego_status)
    cv = cv_arc(speed, yaw_rate, len(pv.future_trajectory))
    err = np.hypot(*(pv.future_trajectory[:, :2] - cv[:, :2]).T)[pv.future_valid]
    return bool(len(err) and err.max() > threshold)


def sample_l2(plans: np.ndarray, scenes: Sequence[Scene]) -> np.ndarray:
    """(N,) L2 [m] of (N, 8, 3) plans against the expert future, mean over the 1, 2, 3 s poses."""
    gt = np.stack([s.privileged.future_trajectory for s in scenes if s.privileged is not None])
    if len(gt) != len(scenes) or len(plans) < len(scenes):
        raise ValueError("sample_l2: every scene needs its privileged future and a plan")
    err = np.hypot(*(np.asarray(plans)[: len(scenes), :, :2] - gt[:, :, :2]).transpose(2, 0, 1))
    return err[:, list(L2_STEPS)].mean(1)


def visible_at_t0(scene: Scene) -> bool | None:
    """Is the sample's event visible at t0 (active then, or a curve in view)? None when unknown (no
    `event_onset_s` in meta: a store of older world code, or another source) or for lane_follow."""
    fam = family_of(scene)
    if fam in ("", NON_EVENT) or "event_onset_s" not in scene.meta:
        return None
    if fam == "curve":
        return True
    onset = scene.meta["event_onset_s"]
    return onset is not None and float(onset) <= 0.0


def _groups(scenes: Sequence[Scene]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(scenes):
        groups.setdefault(family_of(s) or "unknown", []).append(i)
    return groups


def event_metrics(
    scenes: Sequence[Scene],
    plans: np.ndarray,
    pdms_scenes: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """One model's metrics per event family.

    scenes       the evaluated samples (privileged part needed: future and event label)
    plans        (N, 8, 3) the model's plans (box-centre poses, current ego frame), row i for scenes[i]
    pdms_scenes  token → PDMS sub-scores (`PDMSReport.to_json()["scenes"]`); scenes without one (not
                 scored, or beyond the PDMS scene cap) are left out of that family's PDMS mean
    Returns {"protocol", "event_fraction"[, "event_at_t0_fraction"], "families": {family: {"num_samples",
    "fraction", "l2_m", "pdms", "nc", "dac", "num_pdms"[, "at_t0"]}}}; "events" aggregates every family
    but lane_follow, "events_at_t0" the event samples visible at t0 (`visible_at_t0`; when known).
    """
    l2 = sample_l2(plans, scenes)
    groups = _groups(scenes)
    events = [i for f, idx in groups.items() if f != NON_EVENT for i in idx]
    visible = [visible_at_t0(s) for s in scenes]
    known = any(v is not None for v in visible)
    at_t0 = [i for i in events if visible[i]]
    aggregates = [("events", sorted(events))] + ([("events_at_t0", at_t0)] if known else [])
    out: dict[str, Any] = {}
    for fam, idx in [*sorted(groups.items()), *aggregates]:
        if not idx:
            continue
        block: dict[str, Any] = {
            "num_samples": len(idx),
            "fraction": len(idx) / len(scenes),
            "l2_m": float(l2[idx].mean()),
        }
        if known and fam != NON_EVENT:
            block["at_t0"] = float(np.mean([bool(visible[i]) for i in idx]))
        scored = [pdms_scenes[scenes[i].token] for i in idx if pdms_scenes and scenes[i].token in pdms_scenes]
        if scored:
            block["num_pdms"] = len(scored)
            for key in ("pdms", "nc", "dac"):
                block[key] = float(np.mean([s[key] for s in scored]))
        out[fam] = block
    result: dict[str, Any] = {"protocol": PROTOCOL, "event_fraction": len(events) / len(scenes)}
    if known:
        result["event_at_t0_fraction"] = len(at_t0) / len(scenes)
    return {**result, "families": out}


def expert_departure(scenes: Sequence[Scene], threshold: float = DEPART_M) -> dict[str, Any]:
    """Per family: how often the expert's plan departs from constant velocity by > `threshold` m."""
    groups = _groups(scenes)
    dep = np.array([departs_from_cv(s, threshold) for s in scenes])
    events = [i for f, idx in groups.items() if f != NON_EVENT for i in idx]
    rates = {f: float(dep[idx].mean()) for f, idx in sorted(groups.items())}
    if events:
        rates["events"] = float(dep[events].mean())
    at_t0 = [i for i in events if visible_at_t0(scenes[i])]
    if at_t0:
        rates["events_at_t0"] = float(dep[at_t0].mean())
    return {"threshold_m": threshold, "cv": "constant speed and yaw rate (ego status)", "rates": rates}


def format_table(rows: Mapping[str, Mapping[str, Any]], departure: Mapping[str, Any] | None = None) -> str:
    """A plain-text table: family × model (L2 / PDMS), from `event_metrics` results keyed by model name."""
    fams = sorted({f for r in rows.values() for f in r.get("families", {})}, key=_order)
    head = "family".ljust(16) + "".join(m[:22].rjust(24) for m in rows)
    if departure:
        head += "  expert≠CV"
    lines = [head]
    for fam in fams:
        line = fam.ljust(16)
        for r in rows.values():
            b = r.get("families", {}).get(fam)
            line += (
                "-"
                if b is None
                else f"n={b['num_samples']} {b['l2_m']:.2f}m {b.get('pdms', float('nan')):.3f}"
            ).rjust(24)
        if departure:
            rate = departure.get("rates", {}).get(fam)
            line += "" if rate is None else f"  {rate:.2f}"
        lines.append(line)
    return "\n".join(lines)


def _order(fam: str) -> int:
    aggregates = ("events", "events_at_t0")
    if fam in EVENT_FAMILIES:
        return EVENT_FAMILIES.index(fam)
    return len(EVENT_FAMILIES) + 1 + aggregates.index(fam) if fam in aggregates else len(EVENT_FAMILIES)
