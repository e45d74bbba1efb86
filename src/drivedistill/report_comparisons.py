"""The report's "Does distillation help?" part: results.json "comparisons" (drivedistill.stats) as an
HTML table, a forest plot of the intervals per metric and a README table; and the hardware line.

Every cell reads: mean paired difference (row − reference) [95 % interval], the corrected p-value and
the verdict. A pair that could not be tested says why, instead of a number.
"""

from __future__ import annotations

import base64
import fnmatch
import html
from collections.abc import Sequence
from typing import Any

from drivedistill.report_figures import png_bytes, pyplot

VERDICT_COLOURS = {"helps": "#2a9d3c", "hurts": "#c0392b", "no evidence": "#7f7f7f"}


def hardware_line(results: dict[str, Any]) -> str:
    """One line naming what the figures were measured on (results.json "hardware")."""
    hw = results.get("hardware")
    if not isinstance(hw, dict):
        return "hardware: not recorded (results.json from before schema 2)"
    cuda = f" ({hw['cuda_device']})" if hw.get("cuda_device") else ""
    return (
        f"measured on {hw.get('cpu_model', '?')}, {hw.get('logical_cpus', '?')} logical CPUs, "
        f"{hw.get('torch_threads', '?')} torch threads, torch {hw.get('torch', '?')} "
        f"(CPU kernels {hw.get('torch_cpu_capability', '?')}), device {hw.get('device', '?')}{cuda}; "
        "another CPU or thread count rounds floats differently: its figures differ, judge them by the "
        "paired intervals"
    )


def _pairs(results: dict[str, Any], rows: Sequence[str] | None = None) -> list[dict[str, Any]]:
    pairs = list(results.get("comparisons", {}).get("pairs", []))
    if rows:
        pairs = [p for p in pairs if any(fnmatch.fnmatchcase(p["row"], pat) for pat in rows)]
    return pairs


def _metric_meta(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(key, label, lower is better) of the compared metrics, in their results.json order."""
    seen: dict[str, tuple[str, str, bool]] = {}
    for p in _pairs(results):
        for key, m in p["metrics"].items():
            seen.setdefault(key, (key, m["label"], bool(m["lower_is_better"])))
    return list(seen.values())


def _cell(m: dict[str, Any], digits: int = 3) -> str:
    if m.get("verdict") == "not tested" or "mean_difference" not in m:
        return "not tested"
    lo, hi = m["ci95"]
    p = m.get("p_adjusted")
    p_txt = "p n/a" if p is None else f"p={p:.3g}"
    return f"{m['mean_difference']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] {p_txt} {m['verdict']}"


def _caption(results: dict[str, Any]) -> str:
    c = results.get("comparisons", {})
    return (
        f"Δ = row − reference, paired ({c.get('pairing_rule', '')}); [{c.get('confidence_level', 0.95):.0%} "
        f"interval, uncorrected] = {c.get('interval', '')}; p = paired test corrected for the run's "
        f"{c.get('num_tests', 0)} tests ({c.get('correction', '')}); verdict at α = {c.get('alpha', 0.05)}, "
        "in each metric's direction (lower L2 / collision is better)."
    )


def comparisons_table(results: dict[str, Any]) -> tuple[list[str], list[list[str]], list[str]]:
    """(headers, rows, notes): one row per pair, one column per metric; notes give why a cell is untested."""
    meta = _metric_meta(results)
    headers = ["row", "vs", "paired over"] + [
        f"Δ {label} ({'lower' if lower else 'higher'} is better)" for _, label, lower in meta
    ]
    rows, notes = [], []
    for p in _pairs(results):
        over = sorted({str(m.get("paired_over")) for m in p["metrics"].values() if m.get("paired_over")})
        rows.append(
            [p["row"], f"{p['reference']} ({p['kind']})", ", ".join(over) or "–"]
            + [_cell(p["metrics"][k]) if k in p["metrics"] else "–" for k, _, _ in meta]
        )
        reasons = {m["reason"] for m in p["metrics"].values() if m.get("reason")}
        notes += [f"{p['row']} vs {p['reference']}: {r}" for r in sorted(reasons)]
    return headers, rows, notes


def forest_plot(results: dict[str, Any]) -> bytes | None:
    """PNG: one panel per metric, one line per pair — the mean difference and its interval, coloured
    by verdict, with the zero line; each panel's title says which side is better."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    pairs, meta = _pairs(results), _metric_meta(results)
    if not pairs or not meta:
        return None
    labels = [f"{p['row']}\nvs {p['reference']}" for p in pairs]
    height = max(2.6, 0.55 * len(pairs) + 1.4)
    fig, axes = plt.subplots(1, len(meta), figsize=(3.1 * len(meta) + 2.4, height), dpi=100, sharey=True)
    axes = list(axes) if len(meta) > 1 else [axes]
    for ax, (key, label, lower) in zip(axes, meta):
        for y, p in enumerate(pairs):
            m = p["metrics"].get(key, {})
            if "mean_difference" not in m:
                ax.text(0, y, "not tested", ha="center", va="center", fontsize=7, color="#999")
                continue
            lo, hi = m["ci95"]
            colour = VERDICT_COLOURS.get(m.get("verdict", ""), "#7f7f7f")
            ax.plot([lo, hi], [y, y], color=colour, lw=2.2, solid_capstyle="butt")
            ax.plot([m["mean_difference"]], [y], "o", color=colour, ms=5)
        ends = [abs(v) for p in pairs for v in p["metrics"].get(key, {}).get("ci95", [])]
        if max(ends, default=0.0) < 1e-9:  # all zero up to rounding: no 1e-16 axis of float noise
            ax.set_xlim(-1.0, 1.0)
        ax.axvline(0.0, color="#333", lw=0.8, ls="--")
        ax.set_title(f"Δ {label}\n{'← better' if lower else 'better →'}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.margins(x=0.15)
    axes[0].set_yticks(range(len(pairs)), labels, fontsize=7)
    axes[0].set_ylim(len(pairs) - 0.5, -0.5)
    handles = [plt.Line2D([], [], color=c, lw=2.2, marker="o", label=v) for v, c in VERDICT_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    return png_bytes(fig, (0, 0.08, 1, 1))


def comparisons_html(results: dict[str, Any]) -> list[str]:
    """The report section: heading, caption, table, untested reasons, forest plot."""
    parts = ["<h2>Does distillation help? Paired comparisons with their baselines</h2>"]
    if "comparisons" not in results:
        return [*parts, "<p class='note'>results.json has no comparisons (schema before 2): re-run.</p>"]
    headers, rows, notes = comparisons_table(results)
    if not rows:
        return [*parts, "<p class='note'>No recipe row has a baseline row in this run.</p>"]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = ""
    for r in rows:
        cells = ""
        for c in r:
            colour = next((col for v, col in VERDICT_COLOURS.items() if c.endswith(v)), None)
            style = f" style='color:{colour};font-weight:600'" if colour and colour != "#7f7f7f" else ""
            cells += f"<td{style}>{html.escape(c)}</td>"
        body += f"<tr>{cells}</tr>"
    parts.append(f"<p>{html.escape(_caption(results))}</p>")
    parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    png = forest_plot(results)
    if png is not None:
        alt = "forest plot: mean paired difference and 95 % interval per metric (colour: verdict)"
        b64 = base64.b64encode(png).decode()
        parts.append(
            f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>"
        )
    return parts


def comparisons_markdown(results: dict[str, Any], rows: Sequence[str] | None = None) -> str:
    """The README's "Does distillation help?" table (`--block comparisons`), its caption and footer."""
    if "comparisons" not in results:
        raise ValueError("results.json has no 'comparisons' (schema < 2); re-run the study to compute them")
    headers, table, notes = comparisons_table(results)
    keep = {p["row"] for p in _pairs(results, rows)}
    table = [r for r in table if r[0] in keep]
    if rows and not table:
        raise ValueError(
            f"no compared row matches {list(rows)}; rows: {sorted({p['row'] for p in _pairs(results)})}"
        )
    lines = ["| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
    for r in table:
        cells = [f"`{r[0]}`", f"`{r[1]}`", r[2]] + [
            c.replace(" helps", " **helps**").replace(" hurts", " **hurts**") for c in r[3:]
        ]
        lines.append("| " + " | ".join(cells) + " |")
    untested = [n for n in notes if n.split(" vs ")[0] in keep]
    meta = f"preset `{results.get('preset')}`, seeds {results.get('seeds')}, config `{results.get('config_hash')}`, {results.get('created', '')}"
    footer = [_caption(results), *(f"not tested — {n}" for n in untested), meta, hardware_line(results)]
    return "\n".join(
        [*lines, "", "<sub>" + "<br>".join(html.escape(f, quote=False) for f in footer) + "</sub>"]
    )
