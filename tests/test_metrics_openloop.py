"""Golden tests of the nuScenes open-loop metric core (hand-computed values, arithmetic in comments).

Grid reminder: cell (i, j) is centred at x = -49.75 + 0.5·i, y = -49.75 + 0.5·j; the centre point of a
waypoint p falls in cell trunc((p + 49.75) / 0.5); its footprint in trunc(p / 0.5 + offset), offsets
i = 97..104, j = 98..101.
"""

from __future__ import annotations

import numpy as np
import pytest

from drivedistill.metrics.occupancy import ego_footprint_offsets
from drivedistill.metrics.openloop import (
    OpenLoopOptions,
    evaluate_openloop,
    horizon_summary,
    step_metrics,
    token_hash,
)

FAR = np.array([0.0, 20.0])  # a GT waypoint whose footprint (j = 138..141) misses every cell used below


def _empty(n: int) -> np.ndarray:
    return np.zeros((n, 6, 200, 200), bool)


def _single(pred_xy: tuple[float, float], cells: list[tuple[int, int]], step: int = 0, **opts: object):
    """Step metrics of one sample: pred at `pred_xy` at every step, GT far away, `cells` occupied at `step`."""
    pred = np.tile(np.array(pred_xy, float), (1, 6, 1))
    gt = np.tile(FAR, (1, 6, 1))
    occ = _empty(1)
    for i, j in cells:
        occ[0, step, i, j] = True
    return step_metrics(pred, gt, np.ones((1, 6), bool), occ, OpenLoopOptions(**opts))  # type: ignore[arg-type]


def test_footprint_is_32_cells_8_by_4() -> None:
    # x ∈ [-2.042 + 0.5, 2.042 + 0.5] = [-1.542, 2.542] m → (x + 49.75) / 0.5 ∈ [96.416, 104.584] → i = 97..104 (8)
    # y ∈ [-0.925, 0.925] m → (y + 49.75) / 0.5 ∈ [97.65, 101.35] → j = 98..101 (4);  8 × 4 = 32
    fp = ego_footprint_offsets()
    assert fp.shape == (32, 2)
    assert sorted(set(fp[:, 0].tolist())) == list(range(97, 105))
    assert sorted(set(fp[:, 1].tolist())) == list(range(98, 102))


def test_l2_mask_inside_sqrt_and_invalid_step_counts_as_zero() -> None:
    gt = np.zeros((2, 6, 2))
    pred = gt.copy()
    pred[0] += [3.0, 4.0]  # sample 0: sqrt(9 + 16) = 5 at every step
    pred[1] += [0.0, 1.0]  # sample 1: 1 at every step, but step 5 invalid → 0, still in the denominator
    valid = np.ones((2, 6), bool)
    valid[1, 5] = False
    r = evaluate_openloop(pred, gt, valid, _empty(2))
    # per step: (5 + 1) / 2 = 3 at steps 0..4; (5 + 0) / 2 = 2.5 at step 5
    assert r["per_step"]["l2"] == pytest.approx([3, 3, 3, 3, 3, 2.5])
    assert r["per_step"]["valid_count"] == [2, 2, 2, 2, 2, 1]
    # UniAD: v[1], v[3], v[5] = 3, 3, 2.5; avg = 8.5 / 3
    assert r["uniad"]["l2"] == pytest.approx({"1s": 3, "2s": 3, "3s": 2.5, "avg": 8.5 / 3})
    # ST-P3: mean(v[:2]) = 3, mean(v[:4]) = 3, mean(v[:6]) = 17.5 / 6; avg = (6 + 17.5 / 6) / 3
    assert r["stp3"]["l2"] == pytest.approx({"1s": 3, "2s": 3, "3s": 17.5 / 6, "avg": (6 + 17.5 / 6) / 3})
    # strict variant: step 5 averages the one valid sample only: 5 / 1
    strict = evaluate_openloop(pred, gt, valid, _empty(2), options=OpenLoopOptions(l2="strict"))
    assert strict["per_step"]["l2"] == pytest.approx([3, 3, 3, 3, 3, 5])


def test_protocol_aggregation_on_known_vector() -> None:
    v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    # UniAD: v[1], v[3], v[5] = 2, 4, 6; avg (2 + 4 + 6) / 3 = 4
    assert horizon_summary(v, "uniad") == pytest.approx({"1s": 2, "2s": 4, "3s": 6, "avg": 4})
    # ST-P3: (1+2)/2 = 1.5, (1+2+3+4)/4 = 2.5, 21/6 = 3.5; avg 7.5 / 3 = 2.5
    assert horizon_summary(v, "stp3") == pytest.approx({"1s": 1.5, "2s": 2.5, "3s": 3.5, "avg": 2.5})
    with pytest.raises(ValueError, match="protocol"):
        horizon_summary(v, "vad")


def test_cell_hit_by_footprint_but_not_by_centre_point() -> None:
    # waypoint (0, 0): centre cell trunc(49.75 / 0.5) = 99 → (99, 99); footprint i 97..104, j 98..101
    sm = _single((0.0, 0.0), [(104, 98)])
    assert sm.obj_box_col[0].tolist() == [True, False, False, False, False, False]
    assert not sm.obj_col.any()
    sm = _single((0.0, 0.0), [(99, 99)])  # the centre cell is also a footprint cell
    assert sm.obj_col[0, 0] and sm.obj_box_col[0, 0]


def test_truncation_at_cell_boundaries() -> None:
    # footprint: x = 0.49 → trunc(0.98 + 97..104) = 97..104; x = 0.51 → trunc(1.02 + 97..104) = 98..105
    assert not _single((0.49, 0.0), [(105, 99)]).obj_box_col[0, 0]
    assert _single((0.51, 0.0), [(105, 99)]).obj_box_col[0, 0]
    # same laterally: y = 0.51 → j = trunc(1.02 + 98..101) = 99..102
    assert not _single((0.0, 0.49), [(100, 102)]).obj_box_col[0, 0]
    assert _single((0.0, 0.51), [(100, 102)]).obj_box_col[0, 0]
    # centre point: x = 0.24 → trunc(99.98) = 99; x = 0.26 → trunc(100.02) = 100
    assert not _single((0.24, 0.0), [(100, 99)]).obj_col[0, 0]
    assert _single((0.26, 0.0), [(100, 99)]).obj_col[0, 0]
    # truncation toward zero, not floor: x = -49.9 → trunc(-0.3) = 0, inside the grid (floor would be -1)
    assert _single((-49.9, 0.0), [(0, 99)]).obj_col[0, 0]


def test_gt_collision_mask_keeps_sample_in_denominator() -> None:
    pred = np.zeros((2, 6, 2))
    gt = np.tile(FAR, (2, 6, 1))
    gt[0, 2] = [0.0, 0.0]  # sample 0: the GT sits on the obstacle at step 2 too
    occ = _empty(2)
    occ[:, 2, 100, 100] = True  # both predictions (at the origin) hit it at step 2
    valid = np.ones((2, 6), bool)
    r = evaluate_openloop(pred, gt, valid, occ)
    # step 2: sample 0 masked (GT collides), sample 1 counted → 1 / 2 = 50 %; GT collides in 1 / 2 = 50 %
    assert r["per_step"]["obj_box_col"] == pytest.approx([0, 0, 50, 0, 0, 0])
    assert r["per_step"]["gt_box_col"] == pytest.approx([0, 0, 50, 0, 0, 0])
    # UniAD collision: v[1], v[3], v[5] = 0 (step 2 = 1.5 s is not reported); ST-P3 2 s: 50 / 4 = 12.5,
    # 3 s: 50 / 6; avg (0 + 12.5 + 50 / 6) / 3
    assert r["uniad"]["collision"] == pytest.approx({"1s": 0, "2s": 0, "3s": 0, "avg": 0})
    assert r["stp3"]["collision"] == pytest.approx(
        {"1s": 0, "2s": 12.5, "3s": 50 / 6, "avg": (12.5 + 50 / 6) / 3}
    )
    off = evaluate_openloop(pred, gt, valid, occ, options=OpenLoopOptions(gt_mask=False))
    assert off["per_step"]["obj_box_col"] == pytest.approx([0, 0, 100, 0, 0, 0])  # 2 / 2


def test_any_hit_variant_is_cumulative() -> None:
    sm = _single((0.0, 0.0), [(100, 100)], step=1, collision="any_hit")
    assert sm.obj_box_col[0].tolist() == [False, True, True, True, True, True]


def test_rotated_box_variant_follows_heading() -> None:
    # heading +90°: box centre (0, 0.5), |x| ≤ 0.925, y ∈ [-1.542, 2.542]. Cell (99, 103) is centred at
    # (-0.25, 1.75): inside the rotated box; the translated footprint stops at j = 101.
    pred = np.zeros((1, 6, 3))
    pred[..., 2] = np.pi / 2
    gt = np.tile(np.array([0.0, 20.0, 0.0]), (1, 6, 1))
    occ = _empty(1)
    occ[0, 0, 99, 103] = True
    valid = np.ones((1, 6), bool)
    assert step_metrics(pred, gt, valid, occ, OpenLoopOptions(ego_box="rotated")).obj_box_col[0, 0]
    assert not step_metrics(pred, gt, valid, occ, OpenLoopOptions()).obj_box_col[0, 0]


def test_result_carries_protocol_metadata_and_token_hash() -> None:
    gt = np.zeros((2, 6, 2))
    r = evaluate_openloop(gt, gt, np.ones((2, 6), bool), _empty(2), tokens=["a", "b"])
    o = r["options"]
    assert r["protocol"] == "nuscenes_openloop" and r["uniad"]["protocol"] == "uniad"
    assert o["grid"] == {"resolution_m": 0.5, "size": [200, 200], "cell_centre_offset_m": -49.75}
    assert o["footprint_cells"] == 32 and o["gt_mask"] is True and o["num_samples"] == 2
    assert o["token_hash"] == token_hash(["a", "b"]) != token_hash(["b", "a"])
    with pytest.raises(ValueError, match="duplicates"):
        evaluate_openloop(gt, gt, np.ones((2, 6), bool), _empty(2), tokens=["a", "a"])


def test_bad_inputs_fail_loudly() -> None:
    gt = np.zeros((2, 6, 2))
    with pytest.raises(ValueError, match="occupancy: expected"):
        evaluate_openloop(gt, gt, np.ones((2, 6), bool), np.zeros((2, 6, 100, 100), bool))
    with pytest.raises(ValueError, match="gt trajectory"):
        evaluate_openloop(gt, gt[:1], np.ones((2, 6), bool), _empty(2))
    with pytest.raises(ValueError, match=r"OpenLoopOptions\.ego_box"):
        OpenLoopOptions(ego_box="rotate")


def _loop_reference(pred: np.ndarray, gt: np.ndarray, occ: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slow per-sample, per-step restatement of the reference rules (obj_col, obj_box_col after GT mask)."""
    fp = ego_footprint_offsets()
    n = len(pred)
    col, box = np.zeros((n, 6), bool), np.zeros((n, 6), bool)
    for k in range(n):
        for t in range(6):

            def footprint_hit(p: np.ndarray, k: int = k, t: int = t) -> bool:
                cells = [
                    (min(max(int(p[0] / 0.5 + i), 0), 199), min(max(int(p[1] / 0.5 + j), 0), 199))
                    for i, j in fp
                ]
                return any(occ[k, t, i, j] for i, j in cells)

            if footprint_hit(gt[k, t]):
                continue
            box[k, t] = footprint_hit(pred[k, t])
            i, j = int((pred[k, t, 0] + 49.75) / 0.5), int((pred[k, t, 1] + 49.75) / 0.5)
            col[k, t] = 0 <= i < 200 and 0 <= j < 200 and bool(occ[k, t, i, j])
    return col, box


def test_vectorised_core_matches_a_per_sample_loop() -> None:
    rng = np.random.default_rng(3)
    gt = rng.uniform(-60, 60, (64, 6, 2))  # some waypoints leave the grid (clipping / bounds paths)
    pred = gt + rng.normal(0, 2, gt.shape)
    occ = rng.random((64, 6, 200, 200)) < 0.05
    sm = step_metrics(pred, gt, np.ones((64, 6), bool), occ, OpenLoopOptions())
    col, box = _loop_reference(pred, gt, occ)
    assert box.any() and col.any() and (sm.obj_box_col == box).all() and (sm.obj_col == col).all()
