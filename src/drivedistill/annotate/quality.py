"""Annotation-quality gate of VLM-AD: do the annotations carry knowledge the student's target does not?

    report = annotation_quality(annotations, events, futures, ego_status)
    report["pass"]

Three measurements over N samples:

- **label accuracy against the privileged truth** — the annotation's `cause` label against the world's
  event family of the sample (`scene.meta["event"]`: stopped_vehicle, lead_brake, cut_in, stop_and_go,
  cross_traffic, curve, lane_follow), through `ACCEPTED_CAUSES` (e.g. a stop-and-go lead may be named a
  braking, slow or stopped lead, a braking lead that holds its low speed a slow lead; "lane_follow" accepts clear road, following or a slow lead). Overall and
  per event family.
- **label distribution** — the share of each label in each of the six groups; the most frequent cause
  must stay below `max_share` (the old labels were 74 % "go straight", 89 % "keep").
- **trajectory predictability** — per group, the 2-fold cross-validated accuracy of a 5-nearest-neighbour
  classifier reading only a summary of the student's target and input state (`target_features`: end
  pose, speeds along the plan, ego status).
  A label that is a coarsening of the trajectory is predicted almost perfectly; the cause label must
  stay below `max_trajectory_predictability` — it has to say something the target does not.

Samples whose annotation failed or has no cause labels count as wrong for the accuracy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from drivedistill.annotate.schema import ALL_LABEL_GROUPS, CAUSE_GROUPS, Annotation

# world event family → the cause labels that name it correctly
ACCEPTED_CAUSES: dict[str, frozenset[str]] = {
    "stopped_vehicle": frozenset({"stopped vehicle"}),
    "lead_brake": frozenset({"braking lead", "slow lead"}),  # the event lasts while the lead stays slow
    # the world labels a cut-in from 4 s before to 4 s after its trigger: once in our lane it is the lead
    "cut_in": frozenset({"cut-in", "following"}),
    "stop_and_go": frozenset({"braking lead", "slow lead", "stopped vehicle"}),
    "cross_traffic": frozenset({"cross traffic"}),
    "curve": frozenset({"curve"}),
    # the world's slow_vehicle family: the expert changes lane behind a slower car
    "slow_vehicle": frozenset({"slow lead"}),  # ("overtake" is a rule label, never a cause)
    "lane_follow": frozenset({"clear", "following", "slow lead"}),
}
PROTOCOL = "cause_vs_world_event"


def target_features(futures: np.ndarray, ego_status: np.ndarray) -> np.ndarray:
    """(N, 8, 3) futures + (N, 3) ego status → (N, 10) summary of the student's target: end pose (x, y,
    yaw), max |yaw|, speed now / at the end / mean, end-to-now speed ratio, acceleration, yaw rate.
    What a trajectory coarsening (go straight / slow / stop, turn, lane change) is a function of."""
    pts = np.concatenate([np.zeros((len(futures), 1, 2)), futures[..., :2]], 1)
    speeds = np.linalg.norm(np.diff(pts, axis=1), axis=-1) / 0.5
    v0 = ego_status[:, 0]
    return np.stack(
        [
            futures[:, -1, 0],
            futures[:, -1, 1],
            futures[:, -1, 2],
            np.abs(futures[..., 2]).max(1),
            v0,
            speeds[:, -1],
            speeds.mean(1),
            speeds[:, -1] / np.maximum(v0, 0.5),
            ego_status[:, 1],
            ego_status[:, 2],
        ],
        1,
    )


def _knn_cv_accuracy(x: np.ndarray, y: Sequence[str], k: int = 5, seed: int = 0) -> float:
    """2-fold cross-validated accuracy of a k-NN majority vote (standardised features, L2)."""
    n = len(y)
    if n < 4:
        return float("nan")
    labels = np.asarray(y)
    xs = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
    perm = np.random.default_rng(seed).permutation(n)
    folds = [perm[: n // 2], perm[n // 2 :]]
    hits = 0
    for test, fit in (folds, folds[::-1]):
        d = ((xs[test, None, :] - xs[None, fit, :]) ** 2).sum(-1)
        near = np.argsort(d, axis=1, kind="stable")[:, : min(k, len(fit))]
        for i, row in zip(test, near):
            votes = Counter(labels[fit[row]].tolist()).most_common()
            hits += int(votes[0][0] == labels[i])
    return hits / n


def annotation_quality(
    annotations: Sequence[Annotation | None],
    events: Sequence[str],
    futures: np.ndarray,
    ego_status: np.ndarray,
    min_accuracy: float = 0.7,
    max_share: float = 0.6,
    max_trajectory_predictability: float = 0.85,
) -> dict[str, Any]:
    """The VLM-AD annotation gate (module docstring).

    annotations  one per sample (None = the annotator failed)
    events       the world's event family per sample (privileged truth, `scene.meta["event"]`)
    futures      (N, 8, 3) the student's target: future poses (x, y [m], yaw [rad]), ego frame at t = 0
    ego_status   (N, 3) speed [m/s], acceleration [m/s²], yaw rate [rad/s]

    Returns {"protocol", "samples", "annotated", "label_accuracy", "accuracy_per_event": {event: acc},
    "support_per_event", "distribution": {group: {label: share}}, "max_cause_share",
    "trajectory_predictability": {group: acc}, "checks", "failed", "pass"}.
    """
    n = len(annotations)
    if not (len(events) == n == len(futures) == len(ego_status)):
        raise ValueError(
            f"annotation_quality: {n} annotations, {len(events)} events, {len(futures)} futures, "
            f"{len(ego_status)} ego states: one of each per sample"
        )
    if n == 0:
        raise ValueError("annotation_quality: no samples")
    unknown = sorted({e for e in events if e not in ACCEPTED_CAUSES})
    if unknown:
        raise ValueError(
            f"annotation_quality: unknown event families {unknown}; extend ACCEPTED_CAUSES "
            f"(known: {sorted(ACCEPTED_CAUSES)})"
        )
    ok = [a is not None and a.has_causes for a in annotations]
    causes = [a.cause if a is not None else "" for a in annotations]
    right = [bool(o) and c in ACCEPTED_CAUSES[e] for o, c, e in zip(ok, causes, events)]
    per_event: dict[str, float] = {}
    support: dict[str, int] = {}
    for e in sorted(set(events)):
        idx = [i for i, ev in enumerate(events) if ev == e]
        per_event[e] = float(np.mean([right[i] for i in idx]))
        support[e] = len(idx)
    valid = [a for a, o in zip(annotations, ok) if o and a is not None]
    distribution: dict[str, dict[str, float]] = {}
    for group, labels in ALL_LABEL_GROUPS.items():
        counts = Counter(getattr(a, group) for a in valid)
        distribution[group] = {lab: counts.get(lab, 0) / max(len(valid), 1) for lab in labels}
    x = target_features(np.asarray(futures, np.float64), np.asarray(ego_status, np.float64))
    idx_ok = [i for i, o in enumerate(ok) if o]
    predictability = {
        group: _knn_cv_accuracy(x[idx_ok], [getattr(annotations[i], group) for i in idx_ok])
        for group in ALL_LABEL_GROUPS
    }
    accuracy = float(np.mean(right))
    max_cause_share = max(distribution["cause"].values()) if valid else 1.0
    checks = {
        "accurate": accuracy >= min_accuracy,
        "not_dominated": max_cause_share <= max_share,
        "beyond_trajectory": bool(predictability["cause"] <= max_trajectory_predictability),
    }
    return {
        "protocol": PROTOCOL,
        "samples": n,
        "annotated": int(sum(ok)),
        "label_accuracy": accuracy,
        "accuracy_per_event": per_event,
        "support_per_event": support,
        "distribution": distribution,
        "max_cause_share": max_cause_share,
        "trajectory_predictability": predictability,
        "thresholds": {
            "min_accuracy": min_accuracy,
            "max_share": max_share,
            "max_trajectory_predictability": max_trajectory_predictability,
        },
        "checks": checks,
        "failed": [k for k, v in checks.items() if not v],
        "pass": all(checks.values()),
    }


def store_annotation_quality(
    store: Any, annotations_root: str, annotator_key: str = "", split: str | None = None, **thresholds: Any
) -> dict[str, Any]:
    """`annotation_quality` for the samples of a SceneStore split, reading the annotation cache at
    `annotations_root` (the key may be omitted when the cache holds one annotator)."""
    from drivedistill.annotate.cache import AnnotationCache

    cache = AnnotationCache(annotations_root)
    if not annotator_key:
        keys = cache.annotator_keys()
        if len(keys) != 1:
            raise KeyError(f"{cache.root} holds annotators {keys}; pass annotator_key")
        annotator_key = keys[0]
    cached = cache.read(annotator_key)
    tokens = store.tokens(split)
    anns, events, futs, status = [], [], [], []
    for t in tokens:
        scene = store.load(t)
        if scene.privileged is None:
            raise ValueError(f"store_annotation_quality: sample {t} has no privileged part")
        r = cached.get(store.sample_hash(t))
        anns.append(None if r is None else r.annotation)
        events.append(str(scene.meta.get("event", "")))
        futs.append(scene.privileged.future_trajectory)
        status.append(scene.agent_input.ego_status)
    return annotation_quality(anns, events, np.stack(futs), np.stack(status), **thresholds)


__all__ = ["ACCEPTED_CAUSES", "CAUSE_GROUPS", "annotation_quality", "store_annotation_quality"]
