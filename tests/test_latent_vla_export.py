"""The distilled LatentVLA student exports to ONNX and runs in a process that never imports transformers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

STUDENT = {
    "camera_grid": (2, 4),
    "bev_grid": (2, 2),
    "hidden_dim": 32,
    "num_heads": 2,
    "num_fusion_layers": 1,
}


@pytest.mark.slow  # ~94 s: a subprocess with the dynamo ONNX exporter
def test_distilled_student_exports_to_onnx_and_runs_without_transformers(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, torch, onnxruntime as ort
        from drivedistill import registry
        from drivedistill.methods.base import MethodContext
        from drivedistill.testing import random_batch
        entry = registry.get("student", "transfuser")
        student = registry.build("student", "transfuser", entry.config_cls(bev_channels=3, **{STUDENT!r}))
        method = registry.build("method", "latent_vla_distill", student=student, context=MethodContext())
        deploy = method.deployable().eval()
        assert deploy is student  # the latent-action head stays behind in the method

        class Wrap(torch.nn.Module):
            def __init__(self, s):
                super().__init__(); self.s = s
            def forward(self, camera, bev, ego_history, ego_status, command):
                from drivedistill.types import AgentInputBatch
                return self.s(AgentInputBatch(camera, bev, ego_history, ego_status, command)).trajectory

        b = random_batch(2, camera_hw=(64, 128), bev_channels=3, with_privileged=False).inputs
        args = (b.camera, b.bev, b.ego_history, b.ego_status, b.command)
        names = ["camera", "bev", "ego_history", "ego_status", "command"]
        path = r"{tmp_path / "student.onnx"}"
        # the legacy TorchScript exporter mis-traces this student (max error 1.8 m); the dynamo one is exact
        batch_dim = torch.export.Dim("batch", min=1, max=64)
        torch.onnx.export(Wrap(deploy), args, path, input_names=names, output_names=["trajectory"], dynamo=True,
                          dynamic_shapes={{n: {{0: batch_dim}} for n in names}})
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        b1 = random_batch(1, seed=3, camera_hw=(64, 128), bev_channels=3, with_privileged=False).inputs
        feeds = {{n: getattr(b1, n).numpy() for n in names}}
        got = sess.run(None, feeds)[0]
        ref = deploy(b1).trajectory.detach().numpy()
        assert got.shape == (1, 8, 3), got.shape
        assert np.abs(got - ref).max() < 1e-3, np.abs(got - ref).max()
        assert "transformers" not in sys.modules, "the distilled student imported transformers"
        print("OK")
        """
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "OK" in res.stdout
