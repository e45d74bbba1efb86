"""Compact open-loop GT: bit-packed occupancy gives exactly the dense grid's metrics, in memory and by CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from drivedistill.metrics.occupancy import GRID_SIZE, NUM_STEPS, PackedOccupancy
from drivedistill.metrics.openloop import evaluate_openloop
from drivedistill.metrics.openloop_cli import main


def _fixture(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = 0.5 * np.arange(1, NUM_STEPS + 1)
    gt = np.stack([rng.uniform(0, 12, (n, 1)) * t, rng.normal(0, 0.2, (n, 1)) * t], -1)
    pred = gt + rng.normal(0, 1.5, gt.shape)
    valid = rng.random((n, NUM_STEPS)) > 0.1
    occ = rng.random((n, NUM_STEPS, GRID_SIZE, GRID_SIZE)) < 0.05
    return pred, gt, valid, occ


@pytest.mark.parametrize("ego_box", ["translated", "rotated"])
def test_packed_occupancy_scores_exactly_like_the_dense_grid(ego_box: str) -> None:
    pred, gt, valid, occ = _fixture()
    packed = PackedOccupancy.pack(occ)
    assert packed.bits.nbytes * 8 == occ.size and np.array_equal(packed.dense(), occ)
    from drivedistill.metrics.openloop import OpenLoopOptions

    opts = OpenLoopOptions("vehicles", ego_box)
    dense = evaluate_openloop(pred, gt, valid, occ, options=opts)
    compact = evaluate_openloop(pred, gt, valid, packed, options=opts)  # type: ignore[arg-type]
    assert dense["per_step"]["obj_box_col"] == compact["per_step"]["obj_box_col"]
    assert dense == compact


def test_cli_reads_packed_gt_and_packs_dense_files(tmp_path: Path) -> None:
    pred, gt, valid, occ = _fixture(n=12, seed=1)
    np.savez(tmp_path / "pred.npz", trajectory=pred)
    np.savez(tmp_path / "gt.npz", trajectory=gt, valid=valid, occupancy=occ)
    assert main(["--pack-gt", str(tmp_path / "gt.npz"), "--out", str(tmp_path / "gt_packed.npz")]) == 0
    with np.load(tmp_path / "gt_packed.npz") as z:
        assert "occupancy" not in z.files and z["occupancy_packed"].shape == (12, NUM_STEPS, GRID_SIZE, 25)
    for name in ("gt", "gt_packed"):
        args = ["--pred", str(tmp_path / "pred.npz"), "--gt", str(tmp_path / f"{name}.npz")]
        assert main([*args, "--json", str(tmp_path / f"{name}.json")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("gt", "gt_packed"))
    a.pop("inputs"), b.pop("inputs")
    assert a == b
    np.savez(
        tmp_path / "bad.npz",
        trajectory=gt,
        valid=valid,
        occupancy_packed=np.zeros((12, 6, 200, 24), np.uint8),
    )
    assert main(["--pred", str(tmp_path / "pred.npz"), "--gt", str(tmp_path / "bad.npz")]) == 2


def test_large_grids_are_memory_mapped_from_an_uncompressed_npz(tmp_path: Path) -> None:
    from drivedistill.metrics.openloop_cli import _mapped_member

    rng = np.random.default_rng(3)
    bits = rng.integers(0, 256, (5, 6, 200, 25), dtype=np.uint8)
    stored, packed = tmp_path / "stored.npz", tmp_path / "compressed.npz"
    np.savez(stored, trajectory=np.zeros((5, 6, 2)), occupancy_packed=bits)
    np.savez_compressed(packed, occupancy_packed=bits)
    mapped = _mapped_member(stored, "occupancy_packed")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    assert np.array_equal(mapped, bits)
    whole = _mapped_member(packed, "occupancy_packed")  # compressed: read whole, same values
    assert not isinstance(whole, np.memmap) and np.array_equal(whole, bits)
