"""`drivedistill export`: a trained student → ONNX or TorchScript, checked against eager torch.

    drivedistill export --checkpoint RUN --format onnx [--out student.onnx] [--dynamo]
    drivedistill export --checkpoint RUN --format torchscript

The exported graph takes five tensors — camera (B, 3, H, W) and bev (B, C, Hb, Wb) float in [0, 1],
ego_history (B, 4, 3), ego_status (B, 3), command (B,) int64 — and returns trajectory (B, 8, 3) in the
current ego frame [m, m, rad]; ONNX graphs drop inputs a student does not read (ego_mlp: no images,
see `session.get_inputs()`). The example has batch 2 so that the batch axis stays dynamic (a batch-1
example fixes it); image sizes come from the checkpoint's meta.json (the training data) unless given.
Image shapes, first found: --camera-shape / --bev-shape, the first sample of --data STORE, the
checkpoint's meta.json `input_shapes` (its training data), else the default world's sensor sizes with the
BEV channels of the student's config (`bev_channels`, 0 = the world's 2-channel LiDAR histogram); a BEV
channel count the student was not built for is an error before exporting.
The export is then run at batch 3 and compared with eager torch; the maximum difference is printed and
must stay below --tolerance (1e-4). The legacy ONNX exporter needs each backbone feature map to be a
multiple of the student's token grid (`camera_grid`, `bev_grid`), as with the default world's sensors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from drivedistill.models.students.base import Student
from drivedistill.types import NUM_PAST, AgentInputBatch

INPUT_NAMES = ("camera", "bev", "ego_history", "ego_status", "command")


def default_shapes(bev_channels: int = 0) -> dict[str, list[int]]:
    """(H, W, C) of "camera" and "bev" as the default world collects them (WorldConfig's camera and BEV
    grid; the BEV is the LiDAR histogram, world/lidar.py), with `bev_channels` > 0 overriding C."""
    from drivedistill.world.config import WorldConfig
    from drivedistill.world.lidar import LIDAR_CHANNELS

    world = WorldConfig()
    return {
        "camera": [world.camera.height, world.camera.width, 3],
        "bev": [world.bev.height, world.bev.width, bev_channels or len(LIDAR_CHANNELS)],
    }


def store_shapes(store: str | Path) -> dict[str, list[int]]:
    """(H, W, C) of "camera" and "bev" of a SceneStore's first sample."""
    from drivedistill.data.store import SceneStore

    s = SceneStore(store)
    tokens = s.tokens()
    if not tokens:
        raise ValueError(f"{store}: the store holds no sample to take the input shapes from")
    ai = s.load(tokens[0], with_privileged=False).agent_input
    return {"camera": list(ai.camera.shape), "bev": list(ai.bev.shape)}


def student_bev_channels(student: Student) -> int:
    """BEV channels the student's config was built for (0: it reads no BEV or infers nothing)."""
    return int(getattr(getattr(student, "cfg", None), "bev_channels", 0) or 0)


def resolve_shapes(
    student: Student,
    meta: dict[str, object],
    store: str | Path | None = None,
    camera: list[int] | None = None,
    bev: list[int] | None = None,
) -> dict[str, list[int]]:
    """The export's input shapes (module docstring); raises ValueError when the BEV's channel count is not
    the one the student's config was built for."""
    channels = student_bev_channels(student)
    if store is not None:
        shapes = store_shapes(store)
    elif isinstance(saved := meta.get("input_shapes"), dict):
        shapes = {str(k): list(v) for k, v in saved.items()}
    else:
        shapes = default_shapes(channels)
    if camera:
        shapes["camera"] = list(camera)
    if bev:
        shapes["bev"] = list(bev)
    if channels and shapes["bev"][2] != channels:
        raise ValueError(
            f"the student was built for {channels} BEV channels but the export shape is {shapes['bev']}; "
            f"pass --bev-shape H W {channels} (or --data STORE of the data it was trained on)"
        )
    return shapes


class TensorPlanner(nn.Module):
    """A student behind a plain-tensor signature (exporters cannot pass an AgentInputBatch)."""

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student

    def forward(
        self,
        camera: torch.Tensor,
        bev: torch.Tensor,
        ego_history: torch.Tensor,
        ego_status: torch.Tensor,
        command: torch.Tensor,
    ) -> torch.Tensor:
        return self.student(AgentInputBatch(camera, bev, ego_history, ego_status, command)).trajectory


def example_inputs(
    batch: int, shapes: dict[str, list[int]], seed: int = 0, device: str = "cpu"
) -> tuple[torch.Tensor, ...]:
    """Random valid inputs in INPUT_NAMES order; `shapes` holds (H, W, C) of "camera" and "bev"."""
    g = torch.Generator().manual_seed(seed)
    (ch, cw, _), (bh, bw, bc) = shapes["camera"], shapes["bev"]
    tensors = (
        torch.rand(batch, 3, ch, cw, generator=g),
        torch.rand(batch, bc, bh, bw, generator=g),
        torch.randn(batch, NUM_PAST, 3, generator=g) * 5,
        torch.rand(batch, 3, generator=g) * torch.tensor([15.0, 2.0, 0.2]),
        torch.randint(0, 4, (batch,), generator=g),
    )
    return tuple(t.to(device) for t in tensors)


def export_student(
    student: Student, path: str | Path, fmt: str, shapes: dict[str, list[int]], dynamo: bool = False
) -> Path:
    """Write `student` (eval mode, CPU) to `path` as "onnx" or "torchscript"; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shape checks become constants
    model = TensorPlanner(student.cpu().eval()).eval()
    example = example_inputs(2, shapes)
    if fmt == "onnx":
        if dynamo:
            batch = torch.export.Dim("batch")
            torch.onnx.export(
                model, example, str(path), input_names=list(INPUT_NAMES), output_names=["trajectory"],
                dynamo=True, dynamic_shapes={n: {0: batch} for n in INPUT_NAMES},
            )  # fmt: skip
        else:
            axes = {n: {0: "batch"} for n in (*INPUT_NAMES, "trajectory")}
            torch.onnx.export(
                model, example, str(path), input_names=list(INPUT_NAMES), output_names=["trajectory"],
                dynamo=False, dynamic_axes=axes,
            )  # fmt: skip
    elif fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        traced.save(str(path))
    else:
        raise ValueError(f"unknown export format '{fmt}'; use onnx or torchscript")
    return path


def max_difference(student: Student, path: str | Path, fmt: str, shapes: dict[str, list[int]]) -> float:
    """Max |exported − eager| over a batch-3 input (a batch size the export never saw)."""
    inputs = example_inputs(3, shapes, seed=1)
    with torch.no_grad():
        ref = TensorPlanner(student.cpu().eval())(*inputs)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {n: t.numpy() for n, t in zip(INPUT_NAMES, inputs)}
        wanted = [i.name for i in session.get_inputs()]  # inputs a student never reads are pruned
        got = torch.from_numpy(session.run(None, {n: feed[n] for n in wanted})[0])
    else:
        with torch.no_grad():
            got = torch.jit.load(str(path))(*inputs)
    if got.shape != ref.shape:
        raise RuntimeError(
            f"{path}: output shape {tuple(got.shape)} != eager {tuple(ref.shape)} (batch axis fixed?)"
        )
    return float((got - ref).abs().max())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="drivedistill export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--checkpoint", required=True, help="run directory or checkpoints/step_* directory")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument("--out", help="output file (default: CHECKPOINT/student.onnx or student.pt)")
    parser.add_argument("--dynamo", action="store_true", help="ONNX: use the torch.export-based exporter")
    parser.add_argument(
        "--camera-shape", type=int, nargs=3, metavar=("H", "W", "C"), help="override meta.json"
    )
    parser.add_argument("--bev-shape", type=int, nargs=3, metavar=("H", "W", "C"), help="override meta.json")
    parser.add_argument(
        "--data", help="SceneStore whose first sample gives the input shapes (over meta.json)"
    )
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)

    from drivedistill.train.checkpoint import load_student, read_meta, resolve

    ckpt = resolve(args.checkpoint)
    student = load_student(ckpt)
    try:
        shapes = resolve_shapes(student, read_meta(ckpt), args.data, args.camera_shape, args.bev_shape)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else ckpt / ("student.onnx" if args.format == "onnx" else "student.pt")
    export_student(student, out, args.format, shapes, dynamo=args.dynamo)
    diff = max_difference(student, out, args.format, shapes)
    print(f"exported {out} ({args.format}); max |{args.format} - torch| at batch 3 = {diff:.3g}")
    if diff > args.tolerance:
        print(f"error: difference {diff:.3g} exceeds --tolerance {args.tolerance:g}")
        return 1
    return 0
