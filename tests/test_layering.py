"""Layering of the scoring stack: geometry ← sim ← metrics, never back (issue #21 point 5)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "drivedistill"


def _imports(package: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in (SRC / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        out[str(path.relative_to(SRC))] = names
    return out


def test_sim_never_imports_metrics_and_geometry_imports_neither() -> None:
    bad = [
        (f, m)
        for f, mods in _imports("sim").items()
        for m in mods
        if m.startswith(("drivedistill.metrics", "drivedistill.train"))
    ]
    bad += [
        (f, m)
        for f, mods in _imports("geometry").items()
        for m in mods
        if m.startswith(("drivedistill.metrics", "drivedistill.sim", "drivedistill.train"))
    ]
    assert not bad, f"upward imports: {bad}"


def test_plan_scoring_takes_plans_not_networks() -> None:
    mods = _imports("metrics")["metrics/plans.py"]
    assert not any(m.startswith(("torch", "drivedistill.models", "drivedistill.train")) for m in mods)
