"""Open-loop metric from scenes (rasterised occupancy) and through `drivedistill eval openloop`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shapely import affinity
from shapely.geometry import box

from drivedistill.metrics.cli import main as eval_main
from drivedistill.metrics.occupancy import occupancy_from_scene
from drivedistill.metrics.openloop import OpenLoopOptions, evaluate_openloop_scenes, step_metrics
from drivedistill.testing import random_scene
from drivedistill.types import AgentClass, Scene


def _scene_with_agents(rows: Sequence[Sequence[float]], valid: bool = True) -> Scene:
    """random_scene whose agents are the given AGENT_FIELDS rows, the same at every step."""
    scene = random_scene(0, num_agents=len(rows))
    assert scene.privileged is not None
    scene.privileged.agents[:] = np.array(rows, np.float32)[None]
    scene.privileged.agents_valid[:] = valid
    return scene


def test_occupancy_from_scene_box_cells_and_class_filter() -> None:
    # car at x = 10, y = 0, 4 × 2 m: x ∈ [8, 12] → (x + 49.75) / 0.5 ∈ [115.5, 123.5] → i = 116..123;
    # y ∈ [-1, 1] → [97.5, 101.5] → j = 98..101 → 8 × 4 = 32 cells at every future step
    car = [10, 0, 0, 4, 2, 0, 0, AgentClass.VEHICLE]
    walker = [-10, 5, 0, 0.6, 0.6, 0, 0, AgentClass.PEDESTRIAN]
    occ = occupancy_from_scene(_scene_with_agents([car, walker]), "vehicles")
    assert occ.shape == (6, 200, 200) and occ.sum(axis=(1, 2)).tolist() == [32] * 6
    i, j = np.nonzero(occ[0])
    assert (i.min(), i.max(), j.min(), j.max()) == (116, 123, 98, 101)
    # pedestrian 0.6 m square at (-10, 5): (x + 49.75) / 0.5 ∈ [78.9, 80.1] → i = 79, 80; j = 109, 110 → 4 more
    both = occupancy_from_scene(_scene_with_agents([car, walker]), "vehicles+pedestrians")
    assert both.sum(axis=(1, 2)).tolist() == [36] * 6
    assert not occupancy_from_scene(_scene_with_agents([car], valid=False)).any()
    # rotated 90°: the 4 m side now runs along y → 4 cells along i, 8 along j
    i, j = np.nonzero(occupancy_from_scene(_scene_with_agents([[10, 0, np.pi / 2, 4, 2, 0, 0, 0]]))[0])
    assert (i.max() - i.min() + 1, j.max() - j.min() + 1) == (4, 8)


def test_gt_scores_zero_on_random_scenes_and_agrees_with_exact_geometry() -> None:
    scenes = [random_scene(s) for s in range(40)]
    # one scene whose GT drives through an agent (annotation noise): its steps must be masked
    noisy = scenes[0].privileged
    assert noisy is not None
    noisy.agents[4, 0, :2] = noisy.future_trajectory[3, :2]  # agent 0 on the GT pose at 2.0 s
    gt = np.stack([s.privileged.future_trajectory for s in scenes if s.privileged is not None])
    r = evaluate_openloop_scenes(gt, scenes)
    assert r["per_step"]["l2"] == [0.0] * 6 and r["per_step"]["obj_box_col"] == [0.0] * 6
    # the GT's own collisions (masked steps) must be real overlaps in metres, not a frame flip:
    # flagged ⇒ the exact ego box is within a cell diagonal (0.71 m) of an agent; deep overlap ⇒ flagged
    for s in scenes:
        p = s.privileged
        assert p is not None
        sm = step_metrics(
            p.future_trajectory[None],
            p.future_trajectory[None],
            p.future_valid[None],
            occupancy_from_scene(s)[None],
            OpenLoopOptions(),
        )
        for t in range(6):
            x, y = p.future_trajectory[t, :2]
            ego = box(x + 0.5 - 2.042, y - 0.925, x + 0.5 + 2.042, y + 0.925)
            agents = [
                affinity.rotate(
                    box(a[0] - a[3] / 2, a[1] - a[4] / 2, a[0] + a[3] / 2, a[1] + a[4] / 2),
                    a[2],
                    use_radians=True,
                )
                for a in p.agents[t + 1]
            ]
            if sm.gt_box_col[0, t]:
                assert min(ego.distance(a) for a in agents) < 0.71
            if max(ego.intersection(a).area for a in agents) > 1.5:
                assert sm.gt_box_col[0, t]
    assert r["per_step"]["gt_box_col"][3] > 0.0  # the noisy scene's overlap is seen and masked


def _write(tmp: Path, n: int = 2, **overrides: np.ndarray) -> tuple[Path, Path]:
    gt: dict[str, Any] = {
        "trajectory": np.zeros((n, 6, 2)),
        "valid": np.ones((n, 6), bool),
        "occupancy": np.zeros((n, 6, 200, 200), bool),
    }
    gt["occupancy"][0, 5, 104, 98] = True  # sample 0's prediction (at the origin) clips it at 3 s
    gt["trajectory"][:, :, 1] = 20.0  # GT far away: it never collides
    pred: dict[str, Any] = {"trajectory": np.zeros((n, 6, 2))}
    for key, value in overrides.items():
        (pred if key.startswith("pred_") else gt)[key.removeprefix("pred_")] = value
    np.savez(tmp / "gt.npz", **gt)
    np.savez(tmp / "pred.npz", **pred)
    return tmp / "pred.npz", tmp / "gt.npz"


def test_cli_json_schema_and_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = _write(tmp_path)
    out = tmp_path / "out.json"
    assert (
        eval_main(
            [
                "openloop",
                "--pred",
                str(pred),
                "--gt",
                str(gt),
                "--json",
                str(out),
                "--occupancy-classes",
                "vehicles",
            ]
        )
        == 0
    )
    assert "uniad" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["num_samples"] == 2
    assert {"l2", "obj_col", "obj_box_col"} <= set(r["per_step"]) and all(
        len(v) == 6 for v in r["per_step"].values()
    )
    for p in ("uniad", "stp3"):
        assert set(r[p]["l2"]) == set(r[p]["collision"]) == {"1s", "2s", "3s", "avg"}
    # L2: |(0, 0) - (0, 20)| = 20 m at every step, so every horizon and avg is 20
    assert r["uniad"]["l2"]["avg"] == pytest.approx(20) and r["stp3"]["l2"]["3s"] == pytest.approx(20)
    # collision: 1 of 2 samples at step 5 → 50 %; UniAD 3 s = 50, avg 50 / 3; ST-P3 3 s = 50 / 6
    assert r["per_step"]["obj_box_col"] == pytest.approx([0, 0, 0, 0, 0, 50])
    assert r["uniad"]["collision"] == pytest.approx({"1s": 0, "2s": 0, "3s": 50, "avg": 50 / 3})
    assert r["stp3"]["collision"]["3s"] == pytest.approx(50 / 6)
    assert r["options"]["occupancy_classes"] == "vehicles" and r["options"]["token_hash"] is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"valid": np.ones((2, 5), bool)}, "gt.npz['valid']: expected shape (N, 6)"),
        ({"occupancy": np.zeros((2, 6, 100, 100), bool)}, "gt.npz['occupancy']: expected shape"),
        ({"pred_trajectory": np.zeros((3, 6, 2))}, "pred.npz['trajectory']: 3 samples"),
        ({"tokens": np.array(["a", "b"]), "pred_tokens": np.array(["b", "a"])}, "pred.npz['tokens'] differs"),
    ],
)
def test_cli_errors_name_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: dict, message: str
) -> None:
    pred, gt = _write(tmp_path, **overrides)
    assert eval_main(["openloop", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred, gt = _write(tmp_path)
    np.savez(gt, trajectory=np.zeros((2, 6, 2)))
    assert eval_main(["openloop", "--pred", str(pred), "--gt", str(gt)]) == 2
    assert "missing key(s) ['valid', 'occupancy']" in capsys.readouterr().err
