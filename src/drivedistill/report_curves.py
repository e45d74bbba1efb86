"""The report's learning curves: metric vs. labelled training samples (rows with `max_samples`, e.g.
`--preset curves`), and the paired difference of each recipe row from its baseline at every size.

    groups = curve_groups(results)          # {"transfuser/vlm_ad": [(250, row), (850, row), ...], ...}
    png = learning_curves_chart(results)    # None when no row has `max_samples`

Rows of one curve share their name up to a `-n<samples>` suffix (`transfuser/vlm_ad-n850`). Left panels:
the metric's mean over seeds with ± one standard deviation; right panels: row − baseline paired over
seeds (results.json "comparisons", drivedistill.stats) with its 95 % interval, so a reader sees whether
a recipe's effect grows or vanishes as labels become scarce.
"""

from __future__ import annotations

import re
from typing import Any

from drivedistill.report_figures import png_bytes, pyplot
from drivedistill.stats import METRICS, metric_value

# the plotted metrics (drivedistill.stats.METRICS: results.json path, comparisons key, label, direction)
CURVE_METRICS = [m for m in METRICS if m.key in ("openloop/stp3/l2_avg_m", "pdms/navsim-v1.1")]
_SUFFIX = re.compile(r"-n\d+$")


def curve_groups(results: dict[str, Any]) -> dict[str, list[tuple[int, str]]]:
    """Curve name (row name without `-n<samples>`) → [(labelled samples, row name)] sorted by samples;
    only rows with `max_samples` and curves with at least two sizes."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name, row in results.get("models", {}).items():
        n = row.get("max_samples") if isinstance(row, dict) else None
        if n:
            groups.setdefault(_SUFFIX.sub("", name), []).append((int(n), name))
    return {k: sorted(v) for k, v in groups.items() if len(v) >= 2}


def _paired(results: dict[str, Any], row: str, metric_key: str) -> dict[str, Any] | None:
    for pair in results.get("comparisons", {}).get("pairs", []):
        if pair.get("row") == row and pair.get("kind") == "baseline":
            m = pair.get("metrics", {}).get(metric_key)
            if isinstance(m, dict) and "mean_difference" in m:
                return m
    return None


def learning_curves_chart(results: dict[str, Any]) -> bytes | None:
    """PNG: per metric, the curves (mean ± std over seeds vs. labelled samples, log x) and the paired
    differences from the baseline with 95 % intervals; None without curves."""
    groups = curve_groups(results)
    if not groups:
        return None
    plt = pyplot()

    models = results.get("models", {})
    fig, axes = plt.subplots(len(CURVE_METRICS), 2, figsize=(11, 3.3 * len(CURVE_METRICS)), dpi=100)
    colours = {g: f"C{i}" for i, g in enumerate(groups)}
    # curves side by side at each size (a few per cent apart on the log axis) so intervals do not overlap
    dodge = {g: 10 ** (0.012 * (i - (len(groups) - 1) / 2)) for i, g in enumerate(groups)}
    sizes = sorted({n for pts in groups.values() for n, _ in pts})
    for r, metric in enumerate(CURVE_METRICS):
        path, key, lower = metric.path, metric.key, metric.lower_is_better
        label = f"{metric.label} [{metric.unit}]" if metric.unit else metric.label
        ax, dax = axes[r][0], axes[r][1]
        for g, points in groups.items():
            xs, ys, es = [], [], []
            for n, name in points:
                v = metric_value(models[name], path)
                if v is not None:
                    xs.append(n * dodge[g])
                    ys.append(v)
                    es.append(metric_value(models[name].get("std", {}), path) or 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, lw=1.2, color=colours[g], label=g)
            ds = [(n, m) for n, name in points if (m := _paired(results, name, key)) is not None]
            if ds:
                x = [n * dodge[g] for n, _ in ds]
                mean = [m["mean_difference"] for _, m in ds]
                lo = [m["mean_difference"] - m["ci95"][0] for _, m in ds]
                hi = [m["ci95"][1] - m["mean_difference"] for _, m in ds]
                dax.errorbar(x, mean, yerr=[lo, hi], marker="s", capsize=3, lw=1.2, color=colours[g], label=g)
        better = "lower is better" if lower else "higher is better"
        ax.set(xscale="log", xlabel="labelled training samples", ylabel=label)
        ax.set_title(f"{label}: mean ± std over seeds ({better})", fontsize=9)
        dax.axhline(0.0, color="#555", lw=0.8)
        dax.set(xscale="log", xlabel="labelled training samples", ylabel=f"Δ {label}")
        dax.set_title("row − baseline, paired over seeds, 95 % interval (uncorrected)", fontsize=9)
        for a in (ax, dax):
            a.grid(alpha=0.3)
            a.set_xticks(sizes, [f"{n:,}" for n in sizes])  # the sizes themselves, no 10^k minor labels
            a.minorticks_off()
        ax.legend(fontsize=7)
        if dax.get_legend_handles_labels()[0]:  # recipe rows with a paired baseline
            dax.legend(fontsize=7)
    return png_bytes(fig)


def curves_markdown(results: dict[str, Any]) -> str:
    """README table: one row per curve, one column per labelled-set size and metric (mean ± std over
    seeds; for a recipe row also Δ from its baseline [95 % interval])."""
    groups = curve_groups(results)
    sizes = sorted({n for pts in groups.values() for n, _ in pts})
    header = ["curve"] + [f"{m.label} @ {n} labels" for m in CURVE_METRICS for n in sizes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    models = results.get("models", {})
    for g, points in groups.items():
        by_n = dict(points)
        cells = [f"`{g}`"]
        for metric in CURVE_METRICS:
            path, key = metric.path, metric.key
            digits = 2 if path[0] == "openloop" else 3
            for n in sizes:
                name = by_n.get(n)
                v = None if name is None else metric_value(models[name], path)
                if v is None:
                    cells.append("–")
                    continue
                sd = metric_value(models[name].get("std", {}), path)
                text = f"{v:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd else "")
                m = _paired(results, name, key) if name else None
                if m is not None:
                    lo, hi = m["ci95"]
                    text += f"<br>Δ {m['mean_difference']:+.{digits + 1}f} [{lo:+.{digits + 1}f}, {hi:+.{digits + 1}f}]"
                cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["CURVE_METRICS", "curve_groups", "curves_markdown", "learning_curves_chart"]
