"""Rule-based VLM-AD annotator: labels and texts derived from privileged state (future path, lanes, agents).

A deterministic stand-in for a VLM on the embedded world. It reads the expert's future trajectory, the
lane centerlines and the agent tracks (all in the current ego frame, metres), finds the cause of the
manoeuvre (a braking or stopped vehicle in our path, a cut-in, cross traffic, a slower lead, a curve),
and writes the three Q1 texts naming that cause with its distance and speeds. Wording is drawn from
several phrasings with a generator seeded by the sample hash, so texts vary across samples but are
reproducible.

Besides the paper's three labels (a coarsening of the plan), it writes the three cause groups (issue #16):
`cause` (the most important detected cause, `CAUSE_LABEL_PRIORITY`), `agent` (where that agent is: in our
path "ahead", or on our left/right) and `rule` (what the plan does about it). They come from the agent
tracks, the lanes and the route — not from the plan alone — and are checked against the world's event
labels by `annotate.quality.annotation_quality`. The annotator never reads the world's event label
(`scene.meta["event"]`) nor the scenario name: that would make the check circular.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drivedistill.annotate.base import AnnotationResult, Annotator, require_privileged
from drivedistill.annotate.geometry import Cause, find_causes, lateral_offset
from drivedistill.annotate.schema import Annotation
from drivedistill.config import check
from drivedistill.registry import register
from drivedistill.types import DT, Scene


@dataclass
class RulesConfig:
    # [m/s] speed at the end of the plan below which the label is "stop"
    stop_speed: float = field(default=1.0, metadata=check(gt=0))
    # [m/s] mean planned speed below which the label is "move slowly"
    slow_speed: float = field(default=5.0, metadata=check(gt=0))
    # end speed / current speed below which a deceleration is "move slowly"
    slow_ratio: float = field(default=0.7, metadata=check(ge=0, le=1))
    # [rad] heading change over the plan that is a turn (≈ 34°); less is a bend
    turn_yaw: float = field(default=0.6, metadata=check(gt=0))
    # [rad] heading change that is a U-turn (≈ 143°)
    uturn_yaw: float = field(default=2.5, metadata=check(gt=0))
    # [rad] heading change along the route worth naming as a curve
    curve_yaw: float = field(default=0.12, metadata=check(ge=0))
    # [m] lateral offset of the plan's end from the current lane = lane change
    lane_change_offset: float = field(default=1.8, metadata=check(ge=0))
    # [m] an agent closer than this to the ego path is "in our path"
    corridor: float = field(default=1.8, metadata=check(gt=0))
    # [m/s] drop of a lead vehicle's speed within 2 s that counts as braking
    brake_drop: float = field(default=2.0, metadata=check(ge=0))
    # [m] agents farther along the path are ignored
    lookahead: float = field(default=60.0, metadata=check(gt=0))
    # [rad] heading change of the plan or of the route within `curve_lookahead` that makes the `cause`
    # label "curve" (the text's bend threshold is curve_yaw); the world labels "curve" at 0.35 rad
    curve_label_yaw: float = field(default=0.35, metadata=check(ge=0))
    # [m] route ahead considered for the curve label
    curve_lookahead: float = field(default=40.0, metadata=check(gt=0))

    def __post_init__(self) -> None:
        for name in ("stop_speed", "slow_speed", "turn_yaw", "uturn_yaw", "corridor", "lookahead"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RulesConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.uturn_yaw <= self.turn_yaw:
            raise ValueError(
                f"RulesConfig.uturn_yaw ({self.uturn_yaw}) must exceed turn_yaw ({self.turn_yaw})"
            )


# bump when the rules compute other answers for the same config (part of the annotator's cache key)
# 2: hard braking (a ≥ 3 m/s² step or to a standstill, > brake_drop) before cut-in; a cut-in car moves ≥ 1 m
#    across our lane itself; a vehicle beside our path below 1 m/s is stopped; the world event and
#    scenario name are not read
# 3: a car moving into our path in a junction, or where our path crosses one, is cross traffic (was a cut-in)
RULES_VERSION = 3


def _kmh(v: float) -> int:
    return round(v * 3.6)


@dataclass(frozen=True)
class Motion:
    """Summary of the ego plan: speeds [m/s], heading change [rad], lateral offset from the lane [m]."""

    v0: float
    v_end: float
    v_mean: float
    x_end: float
    yaw_end: float
    max_abs_yaw: float
    lane_offset: float
    stop_distance: float  # [m] path length until the speed first drops below stop_speed


def analyse_motion(scene: Scene, cfg: RulesConfig) -> Motion:
    """Speeds along the expert plan (finite differences on the 0.5 s grid) and its geometry."""
    priv = require_privileged(scene, "rules annotator")
    n = int(priv.future_valid.sum()) if priv.future_valid.any() else 1
    poses = priv.future_trajectory[:n]
    pts = np.vstack([np.zeros((1, 2), np.float32), poses[:, :2]])
    step = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    speeds = step / DT
    v0 = float(scene.agent_input.ego_status[0])
    slow = np.nonzero(speeds < cfg.stop_speed)[0]
    stop_distance = float(step[: slow[0] + 1].sum()) if len(slow) else float(step.sum())
    return Motion(
        v0=v0,
        v_end=float(speeds[-1]),
        v_mean=float(speeds.mean()),
        x_end=float(poses[-1, 0]),
        yaw_end=float(poses[-1, 2]),
        max_abs_yaw=float(np.abs(poses[:, 2]).max()),
        lane_offset=lateral_offset(priv.map.lanes, poses[-1, :2]),
        stop_distance=stop_distance,
    )


def derive_labels(m: Motion, cfg: RulesConfig) -> tuple[str, str, str]:
    """(control, turn, lane) labels from the plan summary."""
    if m.x_end < -1.0:
        control = "reverse"
    elif m.v_end < cfg.stop_speed:
        control = "stop"
    elif m.v_mean < cfg.slow_speed or m.v_end < cfg.slow_ratio * m.v0:
        control = "move slowly"
    else:
        control = "go straight"
    if abs(m.yaw_end) >= cfg.uturn_yaw:
        turn = "U-turn"
    elif abs(m.yaw_end) >= cfg.turn_yaw:
        turn = "left" if m.yaw_end > 0 else "right"
    else:
        turn = "none"
    lane = "keep"
    if turn == "none" and abs(m.lane_offset) > cfg.lane_change_offset:
        lane = "change left" if m.lane_offset > 0 else "change right"
    return control, turn, lane


# which detected cause becomes the `cause` label: events that force the plan first, then the road shape,
# then ordinary following (a curve explains a plan better than a lead at our speed)
CAUSE_LABEL_PRIORITY = (
    "stopped_vehicle",
    "lead_brake",
    "cut_in",
    "cross_traffic",
    "slow_lead",
    "curve",
    "lead",
)
_CAUSE_LABEL = {
    "stopped_vehicle": "stopped vehicle",
    "lead_brake": "braking lead",
    "cut_in": "cut-in",
    "cross_traffic": "cross traffic",
    "slow_lead": "slow lead",
    "lead": "following",
    "curve": "curve",
}


def _route_bend(scene: Scene, lookahead: float) -> float:
    """Largest |heading change| [rad] (signed) of the route within `lookahead` m ahead, or of the plan."""
    priv = require_privileged(scene, "rules annotator")
    yaws = priv.future_trajectory[: max(int(priv.future_valid.sum()), 1), 2].tolist()
    route = priv.map.route
    if len(route) >= 2:
        ahead = route[(route[:, 0] > -1.0) & (np.linalg.norm(route, axis=1) < lookahead)]
        if len(ahead) >= 2:
            d = np.diff(ahead, axis=0)
            yaws += np.arctan2(d[:, 1], d[:, 0]).tolist()
    return float(max(yaws, key=abs)) if yaws else 0.0


def cause_labels(
    scene: Scene, causes: list[Cause], labels: tuple[str, str, str], cfg: RulesConfig
) -> tuple[str, str, str]:
    """(cause, agent, rule) labels: the most important cause (CAUSE_LABEL_PRIORITY), where its agent is
    relative to our path (in the corridor: "ahead"; else the side it comes from), what the plan does."""
    _, _, lane = labels
    kinds = [c for c in causes if c.kind != "curve"]
    if abs(_route_bend(scene, cfg.curve_lookahead)) >= cfg.curve_label_yaw:
        kinds.append(Cause("curve"))
    kinds.sort(key=lambda c: (CAUSE_LABEL_PRIORITY.index(c.kind), c.distance))
    if not kinds:
        return "clear", "none", "free road"
    top = kinds[0]
    cause = _CAUSE_LABEL[top.kind]
    if top.kind == "curve":
        agent = "none"
    elif top.kind in ("cut_in", "cross_traffic"):
        agent = top.side or "none"
    else:
        agent = "ahead"
    if top.kind in ("cut_in", "cross_traffic"):
        rule = "yield"
    elif top.kind == "curve":
        rule = "follow the curve"
    elif lane != "keep":
        rule = "overtake"
    elif top.kind == "stopped_vehicle":
        rule = "stop behind"
    else:
        rule = "keep gap"
    return cause, agent, rule


class _Writer:
    """Picks phrasings with a generator seeded by the sample hash."""

    def __init__(self, sample_hash: str) -> None:
        seed = int.from_bytes(hashlib.sha256(sample_hash.encode()).digest()[:8], "little")
        self.rng = np.random.default_rng(seed)

    def pick(self, options: list[str], **fmt: object) -> str:
        return options[int(self.rng.integers(len(options)))].format(**fmt)


def current_action(scene: Scene, w: _Writer) -> str:
    """What the ego is doing now, from its status (speed, acceleration, yaw rate)."""
    v, acc, yaw_rate = (float(x) for x in scene.agent_input.ego_status)
    k = _kmh(v)
    if v < 0.5:
        return w.pick(
            ["The ego car is standing still.", "We are stopped.", "The ego vehicle waits at a standstill."]
        )
    if acc < -1.0:
        return w.pick(
            [
                "Braking at {k} km/h.",
                "The ego car is slowing down, now at {k} km/h.",
                "Decelerating through {k} km/h.",
            ],
            k=k,
        )
    if abs(yaw_rate) > 0.1:
        side = "left" if yaw_rate > 0 else "right"
        return w.pick(
            [
                "Steering {s} at {k} km/h.",
                "The ego car is bearing {s} at about {k} km/h.",
                "Driving at {k} km/h while curving {s}.",
            ],
            s=side,
            k=k,
        )
    if acc > 1.0:
        return w.pick(["Accelerating through {k} km/h.", "The ego car is speeding up, now at {k} km/h."], k=k)
    return w.pick(
        [
            "Driving straight at {k} km/h.",
            "Cruising in its lane at about {k} km/h.",
            "The ego car holds a steady {k} km/h.",
        ],
        k=k,
    )


def next_action(m: Motion, labels: tuple[str, str, str], w: _Writer) -> str:
    """The manoeuvre of the plan: lateral part (turn / lane change / bend) and longitudinal part."""
    control, turn, lane = labels
    ke, d = _kmh(m.v_end), round(m.stop_distance)
    if control == "stop":
        lon = w.pick(["come to a stop within {d} m", "brake to a standstill", "stop about {d} m ahead"], d=d)
    elif control == "reverse":
        lon = w.pick(["back up slowly", "reverse a few metres"])
    elif control == "move slowly":
        lon = w.pick(
            ["slow down to {k} km/h", "reduce speed to about {k} km/h", "ease off to {k} km/h"], k=ke
        )
    elif m.v_end > m.v0 + 2.0:
        lon = w.pick(["speed up to {k} km/h", "accelerate to about {k} km/h"], k=ke)
    else:
        lon = w.pick(["keep about {k} km/h", "hold its speed near {k} km/h", "continue at {k} km/h"], k=ke)
    if turn == "U-turn":
        lat = w.pick(["make a U-turn", "turn around"])
    elif turn != "none":
        lat = w.pick(["turn {s}", "take the {s} turn", "steer through a {s} turn"], s=turn)
    elif lane != "keep":
        side = lane.split()[-1]
        lat = w.pick(
            ["change into the {s} lane", "move over to the {s} lane", "switch to the {s} lane"], s=side
        )
    elif m.max_abs_yaw > 0.12:
        side = "left" if m.yaw_end > 0 else "right"
        lat = w.pick(["follow the road as it bends {s}", "stay in lane through the {s} bend"], s=side)
    else:
        lat = w.pick(["stay in the lane", "keep the lane", "go straight ahead"])
    return "It will " + w.pick(["{a} and {b}.", "{a}, then {b}."], a=lat, b=lon)


def _cause_text(c: Cause, w: _Writer) -> str:
    d, v0, v1 = round(c.distance), _kmh(c.speed), _kmh(c.speed_later)
    fmt = {"c": c.noun, "d": d, "v0": v0, "v1": v1, "s": c.side}
    options = {
        "stopped_vehicle": [
            "the {c} {d} m ahead in our path is stopped",
            "a stopped {c} blocks our path {d} m ahead",
            "there is a {c} standing still {d} m ahead",
        ],
        "lead_brake": [
            "the {c} {d} m ahead is braking hard, from {v0} to {v1} km/h",
            "the lead {c} {d} m ahead brakes sharply down to {v1} km/h",
            "the {c} in front of us ({d} m) is slowing quickly",
        ],
        "cut_in": [
            "the {c} on our {s} is cutting into our lane {d} m ahead",
            "a {c} from the {s} lane merges in front of us, {d} m ahead",
            "the {c} {d} m ahead on the {s} swerves into our path",
        ],
        "cross_traffic": [
            "a {c} is crossing our path {d} m ahead, coming from the {s}",
            "cross traffic: the {c} from the {s} passes {d} m ahead",
            "the {c} {d} m ahead is driving across our lane from the {s}",
        ],
        "slow_lead": [
            "the {c} {d} m ahead is slower than us at {v0} km/h",
            "we are closing in on a slower {c} {d} m ahead ({v0} km/h)",
        ],
        "lead": [
            "the {c} {d} m ahead keeps a similar speed",
            "we follow the {c} {d} m ahead at a safe gap",
        ],
        "curve": ["the road curves to the {s} ahead", "a {s} bend is coming up", "the lane bends {s}"],
    }[c.kind]
    return w.pick(options, **fmt)


def reasoning(causes: list[Cause], labels: tuple[str, str, str], w: _Writer) -> str:
    """Why: the most important detected cause, and what it implies for the chosen labels."""
    control, turn, lane = labels
    if turn != "none":
        first = (
            w.pick(["the route turns {t} here", "our route continues to the {t}"], t=turn)
            if turn != "U-turn"
            else "the route requires turning around"
        )
        if causes and causes[0].kind != "curve":
            first += ", and " + _cause_text(causes[0], w)
    elif causes:
        first = _cause_text(causes[0], w)
    else:
        first = w.pick(["the lane ahead is clear", "no vehicle blocks our path", "the road ahead is free"])
    if lane != "keep":
        then = w.pick(
            ["so we change to the {s} lane", "so moving to the {s} lane is the way forward"],
            s=lane.split()[-1],
        )
    elif control == "stop":
        then = w.pick(["so we must stop", "so stopping is the safe choice"])
    elif control == "move slowly":
        then = w.pick(["so we slow down", "so we reduce speed to keep a safe gap"])
    else:
        then = w.pick(["so we keep going", "so we can continue safely"])
    text = f"{first}, {then}."
    return text[0].upper() + text[1:]


class RulesAnnotator(Annotator):
    """Deterministic privileged annotator (no model)."""

    name = "rules"

    def __init__(self, cfg: RulesConfig) -> None:
        super().__init__(cfg)
        self.cfg: RulesConfig = cfg

    def identity(self) -> dict[str, Any]:
        """The base identity plus `RULES_VERSION` (the rules change the answers without a config change)."""
        return {**super().identity(), "rules": RULES_VERSION}

    def annotate_one(self, scene: Scene, sample_hash: str) -> AnnotationResult:
        cfg = self.cfg
        priv = require_privileged(scene, "rules annotator")
        motion = analyse_motion(scene, cfg)
        labels = derive_labels(motion, cfg)
        causes = find_causes(priv, motion.v0, cfg.corridor, cfg.lookahead, cfg.brake_drop, cfg.curve_yaw)
        cause, agent, rule = cause_labels(scene, causes, labels, cfg)
        w = _Writer(sample_hash)
        ann = Annotation(
            current_action=current_action(scene, w),
            next_action=next_action(motion, labels, w),
            reasoning=reasoning(causes, labels, w),
            control=labels[0],
            turn=labels[1],
            lane=labels[2],
            cause=cause,
            agent=agent,
            rule=rule,
        )
        return AnnotationResult(scene.token, sample_hash, ann)


@register("annotator", "rules", RulesConfig)
def build(cfg: RulesConfig) -> RulesAnnotator:
    return RulesAnnotator(cfg)
