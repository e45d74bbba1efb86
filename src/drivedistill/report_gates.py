"""The study's two "can it show distillation?" tables: the teachers' gates and the event families.

- Teacher quality (results.json `teacher_quality`): per recipe (and variant / teacher seed) whether
  its teacher passed the gate measured before and after the students (DESIGN.md: "a teacher that does
  not beat the student is reported as failing, and nothing is claimed for its recipe"), with every
  check and the metrics the checks read.
- Event families (each row's `per_event`, protocol drivedistill-events-v1): how often the expert's
  plan departs from constant velocity per family, and each row's L2 / PDMS on the event samples versus
  plain lane following — where perception, not ego status, decides.

Both render as HTML sections (report.html) and as README blocks (`python -m drivedistill.report
--block teachers|events`).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any


def _num(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) >= 1 else f"{v:.{digits}f}"
    return "–" if v is None else str(v)


def teacher_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): one row per teacher gate; checks that failed are listed by name."""
    headers = ["teacher", "gate", "checks passed", "checks failed", "metrics"]
    rows: list[list[str]] = []
    for label, gate in results.get("teacher_quality", {}).items():
        checks = dict(gate.get("checks", {}))
        metrics = dict(gate.get("metrics", {}))
        vs = gate.get("vs_students")
        if isinstance(vs, dict):
            checks |= {f"vs students: {k}": v for k, v in vs.get("checks", {}).items()}
            metrics |= {k: v for k, v in vs.get("metrics", {}).items()}
        # scalars, and the scalars of a nested block one level down (e.g. the annotations' accuracy)
        for block, sub in list(metrics.items()):
            if isinstance(sub, dict):
                metrics |= {f"{block}.{k}": v for k, v in sub.items()}
        shown = {k: v for k, v in metrics.items() if isinstance(v, int | float | str) or v is None}
        rows.append(
            [
                label,
                "pass" if gate.get("pass") else "FAIL",
                ", ".join(k for k, v in checks.items() if v) or "–",
                ", ".join(k for k, v in checks.items() if not v) or "–",
                "; ".join(f"{k} {_num(v)}" for k, v in shown.items()),
            ]
        )
    return headers, rows


def event_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): per row its L2 [m] and PDMS on all event samples and on lane following, and
    the expert-departs-from-constant-velocity rate of each family as the first row."""
    models = results.get("models", {})
    families: list[str] = []
    for m in models.values():
        for f in m.get("per_event", {}).get("families", {}):
            if f not in families:
                families.append(f)
    if not families:
        return [], []
    headers = ["row"] + [f"{f}: L2 [m] / PDMS" for f in families]
    rows: list[list[str]] = []
    expert = next((m for m in models.values() if "expert_departs_cv" in m.get("per_event", {})), None)
    if expert is not None:
        dep = expert["per_event"]["expert_departs_cv"]
        rates = dep.get("rates", {})
        fam = expert["per_event"].get("families", {})
        rows.append(
            [f"expert departs from CV (> {dep.get('threshold_m')} m) · samples"]
            + [f"{_num(rates.get(f), 2)} · {int(fam.get(f, {}).get('num_samples', 0))}" for f in families]
        )
    for name, m in models.items():
        fam = m.get("per_event", {}).get("families", {})
        if not fam:
            continue
        rows.append(
            [f"`{name}`"]
            + [
                f"{_num(fam.get(f, {}).get('l2_m'), 2)} / {_num(fam.get(f, {}).get('pdms'), 3)}"
                if f in fam
                else "–"
                for f in families
            ]
        )
    return headers, rows


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    if not headers:
        return "(no rows in this results.json)"
    lines = ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def gates_html(results: dict[str, Any]) -> list[str]:
    """The report.html sections: teacher gates, then event families (each only when present)."""
    parts: list[str] = []
    for title, (headers, rows) in (
        ("Teacher quality (gates measured before the teachers teach)", teacher_rows(results)),
        ("Event families (protocol drivedistill-events-v1): L2 [m] / PDMS", event_rows(results)),
    ):
        if not rows:
            continue
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c.strip('`'))}</td>" for c in r) + "</tr>" for r in rows
        )
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>")
    return parts
