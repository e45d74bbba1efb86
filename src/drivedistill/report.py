"""The study report: results.json → a self-contained report.html (tables, plots, scenes, GIF) and the
README table.

Every metric column names its protocol. Values are means over seeds with ± the standard deviation.
Images are embedded as data URIs, so the HTML opens offline from anywhere.

    python -m drivedistill.report --results runs/default/results.json --readme README.md
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from drivedistill.report_comparisons import comparisons_html, comparisons_markdown, hardware_line
from drivedistill.report_curves import curves_markdown, learning_curves_chart
from drivedistill.report_figures import png_bytes, pyplot
from drivedistill.report_gates import event_rows, gates_html, teacher_rows
from drivedistill.report_gates import markdown as gates_markdown
from drivedistill.stats import metric_value
from drivedistill.utils.io import atomic_write_text

# (block, key path, header, unit, lower is better)
OPENLOOP_COLS = [
    ("l2", "1s"),
    ("l2", "2s"),
    ("l2", "3s"),
    ("l2", "avg"),
    ("collision", "1s"),
    ("collision", "2s"),
    ("collision", "3s"),
    ("collision", "avg"),
]
PDMS_COLS = ["pdms", "nc", "dac", "ddc", "ttc", "ep", "c"]
CLOSEDLOOP_COLS = ["driving_score", "progress_m", "collision_rate", "offroad_rate"]


@dataclass
class ReportAssets:
    """Pictures that go into the report besides the tables."""

    scene_panels: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # model → (step, train loss)
    gif: Path | None = None
    gif_caption: str = ""
    extra_figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG)
    notes: list[str] = field(default_factory=list)


def _get(d: dict[str, Any] | None, *path: str) -> float | None:
    return metric_value(d, path)


def _fmt(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None:
        return "–"
    s = f"{mean:.{digits}f}"
    if std is not None and std > 0:
        s += f" ± {std:.{digits}f}"
    return s


def table_rows(results: dict[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Tables as (headers, rows) per section; headers carry the protocol and unit."""
    models: dict[str, Any] = results.get("models", {})
    tables: dict[str, tuple[list[str], list[list[str]]]] = {}
    for proto, label in (("stp3", "ST-P3"), ("uniad", "UniAD")):
        headers = ["model"] + [
            f"{'L2' if b == 'l2' else 'Col.'} {k} [{'m' if b == 'l2' else '%'}] ({label})"
            for b, k in OPENLOOP_COLS
        ]
        rows = []
        for name, m in models.items():
            std = m.get("std", {})
            rows.append(
                [name]
                + [
                    _fmt(_get(m, "openloop", proto, b, k), _get(std, "openloop", proto, b, k))
                    for b, k in OPENLOOP_COLS
                ]
            )
        tables[f"Open loop — nuScenes {label} protocol"] = (headers, rows)
    headers = ["model"] + [f"{c.upper()} (NAVSIM v1.1)" for c in PDMS_COLS]
    rows = [
        [name] + [_fmt(_get(m, "pdms", c), _get(m.get("std", {}), "pdms", c), 3) for c in PDMS_COLS]
        for name, m in models.items()
    ]
    tables["PDMS — NAVSIM v1.1 on the default world's validation scenes"] = (headers, rows)
    headers = ["model"] + [f"{c} (drivedistill-closedloop-v1)" for c in CLOSEDLOOP_COLS]
    rows = [
        [name]
        + [
            _fmt(_get(m, "closedloop", c), _get(m.get("std", {}), "closedloop", c), 3)
            for c in CLOSEDLOOP_COLS
        ]
        for name, m in models.items()
    ]
    tables["Closed loop — the default world"] = (headers, rows)
    scenarios = sorted({sc for m in models.values() for sc in m.get("closedloop_by_scenario", {})})
    if scenarios:  # where the planners leave the road or crash: episodes summed over seeds
        headers = ["model"] + [f"{sc}: off-road / collided of episodes" for sc in scenarios]
        rows = []
        for name, m in models.items():
            counts = m.get("closedloop_by_scenario", {})
            cells = [
                f"{c['offroad']} / {c['collided']} of {c['episodes']}" if (c := counts.get(sc)) else "–"
                for sc in scenarios
            ]
            rows.append([name, *cells])
        tables["Closed loop per scenario — episodes off the road / collided (all seeds)"] = (headers, rows)
    headers = ["model", "student", "method", "params [M]", "latency p50 [ms] (batch 1)", "latency p90 [ms]"]
    rows = [
        [
            name,
            str(m.get("student", "")),
            str(m.get("method", "")),
            _fmt(_get(m, "params_m"), None, 3),
            _fmt(_get(m, "latency_ms", "p50"), _get(m.get("std", {}), "latency_ms", "p50"), 1),
            _fmt(_get(m, "latency_ms", "p90"), _get(m.get("std", {}), "latency_ms", "p90"), 1),
        ]
        for name, m in models.items()
    ]
    tables["Models, size and planning latency"] = (headers, rows)
    return tables


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img_tag(data: bytes, mime: str, alt: str) -> str:
    b64 = base64.b64encode(data).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:{mime};base64,{b64}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _bar_chart(results: dict[str, Any], path: Sequence[str], title: str, ylabel: str) -> bytes | None:
    plt = pyplot()

    names, means, stds = [], [], []
    for name, m in results.get("models", {}).items():
        v = _get(m, *path)
        if v is None:
            continue
        names.append(name)
        means.append(v)
        stds.append(_get(m.get("std", {}), *path) or 0.0)
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 1.5), 3.2), dpi=100)
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return png_bytes(fig)


def _curves_chart(curves: dict[str, list[tuple[int, float]]]) -> bytes | None:
    plt = pyplot()

    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    for name, pts in curves.items():
        if pts:
            steps, vals = zip(*pts)
            ax.plot(steps, vals, label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (total)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return png_bytes(fig)


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f2f2f2} td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:0.5em;vertical-align:top}
figcaption{font-size:12px;color:#555;max-width:640px}
img{max-width:100%;border:1px solid #ddd}
pre{background:#f7f7f7;padding:1em;font-size:12px;overflow:auto;max-height:500px}
.note{background:#fff8e1;padding:0.5em 1em;border-left:4px solid #f0c040}
"""


def render_html(results: dict[str, Any], assets: ReportAssets) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>drivedistill report</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>drivedistill — study report ({html.escape(str(results.get('preset', '')))})</h1>",
        f"<p>seeds {html.escape(str(results.get('seeds')))} · config hash <code>{html.escape(str(results.get('config_hash')))}</code>"
        f" · generated {html.escape(str(results.get('created', '')))}"
        + (
            f" · compute {results['compute_seconds']['total'] / 60:.1f} min (sum of its stages as they ran)"
            if "compute_seconds" in results
            else ""
        )
        + "</p>",
    ]
    parts.append(f"<p>{html.escape(hardware_line(results))}</p>")
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in assets.notes]
    for title, (headers, rows) in table_rows(results).items():
        parts.append(f"<h2>{html.escape(title)}</h2>{_html_table(headers, rows)}")
    parts += gates_html(results)
    parts += comparisons_html(results)
    learning = learning_curves_chart(results)
    if learning is not None:
        parts.append(
            "<h2>Learning curves: metric vs. labelled training samples</h2>"
            + _img_tag(
                learning,
                "image/png",
                "left: mean ± std over seeds; right: row − baseline, paired over seeds, 95 % interval",
            )
        )
    parts.append("<h2>Comparison (bars: mean over seeds, error bars: standard deviation)</h2>")
    charts = [
        (("openloop", "stp3", "l2", "avg"), "avg L2 — ST-P3 protocol", "m"),
        (("openloop", "uniad", "l2", "avg"), "avg L2 — UniAD protocol", "m"),
        (("openloop", "stp3", "collision", "avg"), "avg collision — ST-P3 protocol", "%"),
        (("pdms", "pdms"), "PDMS — NAVSIM v1.1", "score"),
        (("closedloop", "driving_score"), "driving score — drivedistill-closedloop-v1", "score"),
        (("latency_ms", "p50"), "planning latency p50, batch 1", "ms"),
    ]
    for path, title, unit in charts:
        png = _bar_chart(results, path, title, unit)
        if png is not None:
            parts.append(_img_tag(png, "image/png", title))
    if assets.scene_panels:
        parts.append("<h2>Validation scenes: GT, baseline and distilled plans</h2>")
        parts += [_img_tag(p.read_bytes(), "image/png", cap) for cap, p in assets.scene_panels]
    curves = _curves_chart(assets.curves)
    if curves is not None:
        parts.append(
            "<h2>Training curves</h2>" + _img_tag(curves, "image/png", "training loss per model (seed 0)")
        )
    if assets.gif is not None and assets.gif.exists():
        parts.append(
            "<h2>Closed-loop episode</h2>"
            + _img_tag(assets.gif.read_bytes(), "image/gif", assets.gif_caption)
        )
    for cap, p in assets.extra_figures:
        parts.append(_img_tag(p.read_bytes(), "image/png", cap))
    parts.append(
        "<h2>Versions and hardware</h2><pre>"
        + html.escape(
            json.dumps({**results.get("versions", {}), "hardware": results.get("hardware")}, indent=2)
        )
        + "</pre>"
    )
    parts.append(
        "<h2>Resolved configuration</h2><pre>"
        + html.escape(yaml.safe_dump(results.get("config", {}), sort_keys=False))
        + "</pre>"
    )
    # lets a headless browser (tests/test_report.py) check that every embedded image decoded
    parts.append(
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.body.dataset.imagesLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length;});</script>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out_dir: Path, results: dict[str, Any], assets: ReportAssets) -> Path:
    path = Path(out_dir) / "report.html"
    atomic_write_text(path, render_html(results, assets))
    return path


HEADLINE_COLS = [
    ("L2 avg [m] (ST-P3)", ("openloop", "stp3", "l2", "avg"), 2),
    ("L2 avg [m] (UniAD)", ("openloop", "uniad", "l2", "avg"), 2),
    ("Col. avg [%] (ST-P3)", ("openloop", "stp3", "collision", "avg"), 2),
    ("PDMS (NAVSIM v1.1)", ("pdms", "pdms"), 3),
    ("driving score (closed loop)", ("closedloop", "driving_score"), 3),
]
LATENCY_COL = ("p50 latency [ms]", ("latency_ms", "p50"), 1)
# the VLA students' own figures (EvoDriveVLA ladder): unparsable plans and the frozen perception probe
VLA_COLS = [
    ("parse failures (count)", ("parse_failures", "count"), 1),
    ("decoded plans", ("parse_failures", "decoded"), 0),
    ("probe IoU (BEV occupancy)", ("perception_probe", "iou"), 3),
    ("IoU per-cell prior", ("perception_probe", "baselines", "cell_prior_best_threshold", "iou"), 3),
]


def markdown_table(
    results: dict[str, Any], models: Sequence[str] | None = None, vla_columns: bool = False
) -> str:
    """The compact README table: one row per model, the headline metric of each benchmark.

    `models`: shell-style patterns (`vla/*`) choosing and ordering rows (default: all, in results order);
    `vla_columns`: parse failures and the perception probe instead of latency."""
    cols = HEADLINE_COLS + (VLA_COLS if vla_columns else [LATENCY_COL])
    everything: dict[str, Any] = results.get("models", {})
    names = list(everything)
    if models:
        names = list(dict.fromkeys(n for pat in models for n in names if fnmatch.fnmatchcase(n, pat)))
        if not names:
            raise ValueError(f"no model in results matches {list(models)}; models: {list(everything)}")
    lines = ["| model | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in names:
        m = everything[name]
        cells = [_fmt(_get(m, *p), _get(m.get("std", {}), *p), d) for _, p, d in cols]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    meta = f"preset `{results.get('preset')}`, seeds {results.get('seeds')}, config `{results.get('config_hash')}`, {results.get('created', '')}"
    return "\n".join([*lines, "", f"<sub>{meta}<br>{hardware_line(results)}</sub>"])


def update_readme(
    readme: Path,
    results: dict[str, Any],
    block: str = "results",
    models: Sequence[str] | None = None,
    vla_columns: bool = False,
) -> None:
    """Replace the text between the `<!-- {block}:begin -->` / `:end -->` markers in the README with the
    table of `results` (block "results": the latest default run; others, e.g. "study", for more runs;
    block "comparisons": the "Does distillation help?" table of its paired comparisons; "teachers" the
    gates, "events" the event families, "curves" the learning curves). A block named `NAME-comparisons` /
    `-teachers` / `-events` / `-curves` gets that kind of table (a second run's tables beside the first's)."""
    begin, end = f"<!-- {block}:begin -->", f"<!-- {block}:end -->"
    text = readme.read_text()
    kind = block.rsplit("-", 1)[-1]
    if kind == "comparisons":
        table = comparisons_markdown(results, models)
    elif kind == "teachers":
        table = gates_markdown(*teacher_rows(results))
    elif kind == "events":
        table = gates_markdown(*event_rows(results))
    elif kind == "curves":
        table = curves_markdown(results)
    else:
        table = markdown_table(results, models, vla_columns)
    if begin not in text or end not in text:
        raise ValueError(f"{readme}: add the markers {begin} and {end} where the table goes")
    new = re.sub(
        re.escape(begin) + r".*?" + re.escape(end),
        lambda _: f"{begin}\n{table}\n{end}",
        text,
        flags=re.S,
    )
    atomic_write_text(readme, new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drivedistill.report", description="copy a results.json table into the README"
    )
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument(
        "--block",
        default="results",
        help="README markers <!-- BLOCK:begin/end -->; 'comparisons' (or NAME-comparisons) writes the "
        "paired-comparison table, 'teachers' the teacher gates, 'events' the event-family table, "
        "'curves' the learning curves",
    )
    parser.add_argument(
        "--models", nargs="+", default=None, help="rows to keep, as patterns: 'vla/*' (comparisons: by row)"
    )
    parser.add_argument(
        "--vla-columns",
        action="store_true",
        help="parse failures and perception-probe IoU instead of latency (the EvoDriveVLA ladder)",
    )
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    update_readme(args.readme, results, args.block, args.models, args.vla_columns)
    print(f"updated {args.readme} from {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
