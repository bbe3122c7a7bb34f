"""Figures without pyplot: matplotlib's Agg canvas on a bare ``Figure``, so there is no global figure
state and no GUI backend to set (``matplotlib.use`` would change it for the whole process). Reports and
RASA's expert heatmap draw through these two helpers.
"""

from __future__ import annotations

import io


def new_figure(width: float, height: float):
    """A ``width`` × ``height`` inch figure on its own Agg canvas, laid out by matplotlib's constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_png(fig, dpi: float | None = None) -> bytes:
    """The figure as PNG bytes (no software tag, so the same figure gives the same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, dpi=dpi)
    return buf.getvalue()
