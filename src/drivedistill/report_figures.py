"""Matplotlib for the report: the headless backend, and a finished figure as PNG bytes."""

from __future__ import annotations

import io
from typing import Any


def pyplot() -> Any:
    """`matplotlib.pyplot` on the Agg backend (no display; imported on first use, not at report import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, rect: tuple[float, float, float, float] | None = None) -> bytes:
    """Lay out `fig` (tight, inside `rect` when given), encode it as PNG and close it."""
    fig.tight_layout(rect=rect)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()
