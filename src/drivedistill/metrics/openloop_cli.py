"""`drivedistill eval openloop`: score predicted trajectories from arrays, as public evaluators do.

    drivedistill eval openloop --pred PRED.npz --gt GT.npz --json OUT.json [--occupancy-classes vehicles]
drivedistill eval openloop --store STORE --checkpoint RUN [--write-gt GT.npz]   (data/openloop_store.py)

GT.npz    trajectory (N, 6, 2) float [m], current ego frame (x forward, y left); valid (N, 6) bool;
          occupancy (N, 6, 200, 200) bool, occupancy[n, t, i, j] = cell centred at
          x = -49.75 + 0.5·i, y = -49.75 + 0.5·j — or, 8× smaller and read without unpacking,
          occupancy_packed (N, 6, 200, 25) uint8 = np.packbits(occupancy, axis=-1); optional tokens (N,) str.
          Convert a dense file: drivedistill eval openloop --pack-gt GT.npz --out GT_PACKED.npz
PRED.npz  trajectory (N, ≥6, 2|3) [m (, rad)]; optional tokens (N,) str (must equal GT's if both given).
OUT.json  {"num_samples", "per_step": {"l2", "obj_col", "obj_box_col", ...}, "uniad": {"l2", "collision"},
          "stp3": {...}, "protocol", "options"}; L2 in metres, collision in percent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from drivedistill.metrics.occupancy import GRID_SIZE, NUM_STEPS, OCCUPANCY_CLASSES, PackedOccupancy
from drivedistill.metrics.openloop import OpenLoopAccumulator, OpenLoopOptions, format_table
from drivedistill.utils.io import atomic_write_json


class InputError(ValueError):
    """An input file is missing, lacks a key or holds an ill-shaped array; the message names file and key."""


def _load(path: Path, required: dict[str, str], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Arrays of an .npz; `required` maps key → expected shape (for the message)."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable .npz file ({e}); write it with numpy.savez") from e
    with npz:
        missing = [k for k in required if k not in npz.files]
        if missing:
            want = ", ".join(f"{k} {required[k]}" for k in missing)
            raise InputError(f"{path}: missing key(s) {missing}; expected {want}; found keys {npz.files}")
        return {
            k: _mapped_member(path, k) if k in MAPPED_KEYS else npz[k]
            for k in (*required, *optional)
            if k in npz.files
        }


MAPPED_KEYS = ("occupancy", "occupancy_packed")  # the large grids: read lazily, only the cells scored
_ZIP_LOCAL_HEADER = 30  # bytes before the member's name and extra field in a zip local header


def _mapped_member(path: Path, key: str) -> np.ndarray:
    """Array `key` of the .npz at `path`, memory-mapped read-only when the member is stored uncompressed
    (numpy.savez): the scorer touches only the occupancy cells under the ego's footprints, so most of
    the file is never read (and no CRC pass over it). A compressed member is read whole."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(_ZIP_LOCAL_HEADER)
                name_len = int.from_bytes(local[26:28], "little")
                extra_len = int.from_bytes(local[28:30], "little")
                f.seek(info.header_offset + _ZIP_LOCAL_HEADER + name_len + extra_len)
                version = np.lib.format.read_magic(f)
                if version in ((1, 0), (2, 0)):
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dtype = read_header(f)
                    offset = f.tell()
                    if dtype.hasobject:
                        raise InputError(
                            f"{path}['{key}']: object arrays are not accepted; write a numeric array"
                        )
                    return np.memmap(
                        path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
                    )
        with zf.open(info) as member:  # compressed (savez_compressed) or a newer format version: read whole
            return np.lib.format.read_array(member, allow_pickle=False)  # type: ignore[no-any-return]


def _require(path: Path, key: str, arr: np.ndarray, shape: tuple[int | str, ...], kinds: str) -> None:
    """`shape` entries: an int, "N" (any, checked elsewhere), ">=6" or "2|3"."""

    def ok(want: int | str, got: int) -> bool:
        return (
            want == "N"
            or want == got
            or (want == ">=6" and got >= NUM_STEPS)
            or (want == "2|3" and got in (2, 3))
        )

    expected = "(" + ", ".join(str(s) for s in shape) + ")"
    if arr.ndim != len(shape) or not all(ok(w, g) for w, g in zip(shape, arr.shape)):
        raise InputError(f"{path}['{key}']: expected shape {expected}, got {arr.shape}")
    if arr.dtype.kind not in kinds:
        raise InputError(f"{path}['{key}']: expected dtype kind in {kinds!r}, got {arr.dtype}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InputError(
            f"{path}['{key}']: contains NaN or Inf; write 0 at invalid steps and mark them in 'valid'"
        )


def _has_key(path: Path, key: str) -> bool:
    """Whether the .npz at `path` holds `key` (reads the zip directory only)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return key in npz.files
    except (OSError, ValueError):
        return False  # _load reports the unreadable file


def pack_gt(src: Path, dst: Path) -> None:
    """Rewrite a dense GT.npz with `occupancy_packed` instead of `occupancy` (atomically)."""
    from drivedistill.utils.io import atomic_write_with

    arrays = _load(src, {"occupancy": f"(N, {NUM_STEPS}, {GRID_SIZE}, {GRID_SIZE}) bool"})
    with np.load(src, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files if k != "occupancy"}
    data["occupancy_packed"] = PackedOccupancy.pack(arrays["occupancy"]).bits

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **data)  # type: ignore[arg-type]

    atomic_write_with(dst, write)


def load_inputs(
    pred_path: Path, gt_path: Path
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str] | None]:
    """Read and validate PRED.npz and GT.npz; returns (pred arrays, gt arrays, tokens or None)."""
    grid = f"(N, {NUM_STEPS}, {GRID_SIZE}, {GRID_SIZE}) bool"
    packed = _has_key(gt_path, "occupancy_packed")
    occ_key = "occupancy_packed" if packed else "occupancy"
    occ_shape = f"(N, {NUM_STEPS}, {GRID_SIZE}, 25) uint8" if packed else grid
    gt = _load(
        gt_path,
        {"trajectory": f"(N, {NUM_STEPS}, 2) float", "valid": f"(N, {NUM_STEPS}) bool", occ_key: occ_shape},
        ("tokens",),
    )
    if packed:
        try:
            gt["occupancy"] = PackedOccupancy(gt.pop("occupancy_packed"))  # type: ignore[assignment]
        except ValueError as e:
            raise InputError(f"{gt_path}: {e}") from None
    pred = _load(pred_path, {"trajectory": "(N, 6, 2) float"}, ("tokens",))
    _require(gt_path, "trajectory", gt["trajectory"], ("N", NUM_STEPS, "2|3"), "fiu")
    _require(gt_path, "valid", gt["valid"], ("N", NUM_STEPS), "b")
    if not packed:
        _require(gt_path, "occupancy", gt["occupancy"], ("N", NUM_STEPS, GRID_SIZE, GRID_SIZE), "biu")
    _require(pred_path, "trajectory", pred["trajectory"], ("N", ">=6", "2|3"), "fiu")
    n = len(gt["trajectory"])
    for path, arrays in ((gt_path, gt), (pred_path, pred)):
        for key, arr in arrays.items():
            if len(arr) != n:
                raise InputError(f"{path}['{key}']: {len(arr)} samples, but {gt_path}['trajectory'] has {n}")
        if "tokens" in arrays:
            _require(path, "tokens", arrays["tokens"], ("N",), "US")
    token_arr = gt.get("tokens", pred.get("tokens"))
    tokens = None if token_arr is None else [str(t) for t in token_arr]
    if "tokens" in gt and "tokens" in pred and not np.array_equal(gt["tokens"], pred["tokens"]):
        bad = int(np.flatnonzero(gt["tokens"] != pred["tokens"])[0])
        raise InputError(
            f"{pred_path}['tokens'] differs from {gt_path}['tokens'] first at index {bad} "
            f"({pred['tokens'][bad]!r} vs {gt['tokens'][bad]!r}); write predictions in the GT order"
        )
    return pred, gt, tokens


def evaluate_files(
    pred_path: Path, gt_path: Path, options: OpenLoopOptions, chunk_size: int = 512
) -> dict[str, Any]:
    """Score PRED.npz against GT.npz (chunks of `chunk_size` samples bound the working memory)."""
    pred, gt, tokens = load_inputs(pred_path, gt_path)
    acc = OpenLoopAccumulator(options)
    for s in range(0, len(gt["trajectory"]), chunk_size):
        sl = slice(s, s + chunk_size)
        acc.update(pred["trajectory"][sl], gt["trajectory"][sl], gt["valid"][sl], gt["occupancy"][sl])
    result = acc.result(tokens)
    result["inputs"] = {"pred": str(pred_path), "gt": str(gt_path)}
    return result


def main(argv: list[str]) -> int:
    if any(
        a == "--store" or a.startswith("--store=") for a in argv
    ):  # from a SceneStore: data/openloop_store.py
        from drivedistill.data.openloop_store import main as store_main

        return store_main(argv)
    parser = argparse.ArgumentParser(
        prog="drivedistill eval openloop",
        description="nuScenes open-loop L2 / collision under the ST-P3 and UniAD protocols, from arrays.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pred", type=Path, help="PRED.npz with trajectory (N, 6, 2)")
    parser.add_argument(
        "--gt", type=Path, help="GT.npz with trajectory, valid, occupancy or occupancy_packed"
    )
    parser.add_argument("--pack-gt", type=Path, help="convert this dense GT.npz to the packed format (--out)")
    parser.add_argument("--out", type=Path, help="output of --pack-gt")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument(
        "--occupancy-classes",
        default="unspecified",
        choices=[*OCCUPANCY_CLASSES, "unspecified"],
        help="what GT occupancy holds, recorded with the result (UniAD: vehicles; ST-P3/VAD: vehicles+pedestrians)",
    )
    parser.add_argument("--ego-box", default="translated", choices=["translated", "rotated"])
    parser.add_argument("--collision", default="per_step", choices=["per_step", "any_hit"])
    parser.add_argument("--l2", default="reference", choices=["reference", "strict"])
    parser.add_argument(
        "--no-gt-mask", action="store_true", help="count collisions where the GT collides too"
    )
    parser.add_argument("--chunk-size", type=int, default=512)
    args = parser.parse_args(argv)
    if args.pack_gt is not None:
        if args.out is None:
            parser.error("--pack-gt needs --out GT_PACKED.npz")
        try:
            pack_gt(args.pack_gt, args.out)
        except InputError as e:
            print(f"drivedistill eval openloop: error: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.out}")
        return 0
    if args.pred is None or args.gt is None:
        parser.error("give --pred PRED.npz and --gt GT.npz (or --pack-gt GT.npz --out OUT.npz)")
    if args.chunk_size < 1:
        parser.error(f"--chunk-size must be >= 1, got {args.chunk_size}")
    options = OpenLoopOptions(
        occupancy_classes=args.occupancy_classes,
        ego_box=args.ego_box,
        collision=args.collision,
        l2=args.l2,
        gt_mask=not args.no_gt_mask,
    )
    try:
        result = evaluate_files(args.pred, args.gt, options, args.chunk_size)
    except (InputError, ValueError) as e:
        print(f"drivedistill eval openloop: error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json is not None:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
