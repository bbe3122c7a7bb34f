"""The plots of reports and comparisons, on the bare-Figure helpers of :mod:`routealign.plots`."""

from __future__ import annotations

from collections.abc import Sequence

from ..plots import new_figure, to_png


def error_bar(m: dict | None, scale: float) -> tuple[float, float, float]:
    """(value, minus, plus) for an error bar; zeros for a missing metric."""
    if not m or m.get("value") is None:
        return 0.0, 0.0, 0.0
    v = m["value"] * scale
    return v, max(0.0, v - m["low"] * scale), max(0.0, m["high"] * scale - v)


def bar_plot(labels: Sequence[str], series: dict[str, Sequence[dict | None]], title: str) -> bytes:
    """Bars of rates (in %) per label, one bar per series, with their bootstrap intervals as error bars."""
    import numpy as np

    fig = new_figure(min(16, max(4.5, 0.5 * len(labels) * len(series) + 2)), 3.8)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for k, (name, ms) in enumerate(series.items()):
        v, minus, plus = zip(*(error_bar(m, 100) for m in ms), strict=True) if ms else ((), (), ())
        offset = (k - (len(series) - 1) / 2) * width
        ax.bar(x + offset, v, width, yerr=[minus, plus], capsize=3, label=name)
    ax.set_xticks(
        x,
        [str(lab) for lab in labels],
        rotation=30 if len(labels) > 4 else 0,
        ha="right" if len(labels) > 4 else "center",
    )
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(loc="lower right", fontsize="small")
    return to_png(fig)


def routing_heatmap(routing: dict, title: str = "Mean routing weight by category") -> bytes:
    """Categories × routes, cells annotated with the mean gate weight."""
    import numpy as np

    experts, domains = routing["experts"], routing["domains"]
    matrix = np.array([domains[d] for d in domains], dtype=float).reshape(len(domains), len(experts))
    fig = new_figure(max(4.5, 0.9 * len(experts) + 3), max(2.5, 0.45 * len(domains) + 1.5))
    ax = fig.add_subplot()
    image = ax.imshow(
        matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(1.0, float(matrix.max(initial=0)))
    )
    ax.set_xticks(range(len(experts)), experts, rotation=30 if len(experts) > 4 else 0)
    ax.set_yticks(range(len(domains)), list(domains))
    if matrix.size <= 300:
        for (i, j), w in np.ndenumerate(matrix):
            ax.text(
                j,
                i,
                f"{w:.2f}",
                ha="center",
                va="center",
                fontsize="small",
                color="white" if w < 0.5 else "black",
            )
    fig.colorbar(image, ax=ax)
    ax.set_title(title)
    return to_png(fig)
