"""Report charts as PNG bytes, drawn with matplotlib's Agg canvas (no display, no pyplot).

Figures are built on :class:`matplotlib.figure.Figure` directly, so drawing a report never
touches pyplot's global state or needs a GUI backend, and is safe in a server thread.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from explain.narrative import metric_names

DPI = 110
_FLAG_COLOUR = "#b3261e"
_BAR_COLOUR = "#2f6f9f"
_REGION = re.compile(r"region_(\d+)_(\d+)")


def literal(text: object) -> str:
    """``text`` as matplotlib draws it literally: every ``$`` escaped, so no mathtext.

    Feature, metric and site names come from sites; a name like ``$\\foo{$`` would
    otherwise be parsed as TeX and fail the whole report.
    """
    return str(text).replace("$", r"\$")


def metrics_chart(metrics: Sequence[Mapping[str, Any]], max_panels: int = 4) -> bytes | None:
    """One small panel per metric against the round number; ``None`` when nothing to plot."""
    # Engineering timings (*_seconds) are in the appendix table, not plotted beside the model.
    names = [n for n in metric_names(metrics) if not n.endswith("_seconds")][:max_panels]
    if not names:
        return None
    fig = Figure(figsize=(3.1 * len(names), 2.8), dpi=DPI, layout="constrained")
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        points = [(m["round"], m["metrics"].get(name)) for m in metrics]
        xs = [r for r, v in points if v is not None]
        ys = [v for _, v in points if v is not None]
        ax.plot(xs, ys, marker="o", color=_BAR_COLOUR, linewidth=1.8, markersize=4)
        ax.set_title(literal(name), fontsize=10)
        ax.set_xlabel("round", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if xs:
            ax.set_xticks(_round_ticks(xs))
    return _png(fig)


def importance_chart(global_attribution: Mapping[str, Any], top: int = 15) -> bytes:
    """Horizontal bars of mean |SHAP| for the most important features, largest on top."""
    values = np.asarray(global_attribution["mean_abs"], dtype=float)
    names = global_attribution["feature_names"]
    order = np.argsort(-values, kind="stable")[:top][::-1]
    fig = Figure(figsize=(7.5, 0.32 * len(order) + 1.2), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    # Positions, then labels: barh with names as categories would also merge duplicates.
    ax.barh(range(len(order)), values[order], color=_BAR_COLOUR)
    ax.set_yticks(range(len(order)), [literal(names[i]) for i in order])
    ax.set_xlabel("mean |SHAP value| (class probability)", fontsize=9)
    ax.set_title(
        f"Global feature importance: {global_attribution['row_count']} rows, "
        f"{len(global_attribution['sites'])} site(s)",
        fontsize=10,
    )
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def region_map(global_attribution: Mapping[str, Any]) -> bytes | None:
    """Image audits: the region importances laid out as the image grid they come from.

    ``None`` unless every feature is named ``region_<r>_<c>``.
    """
    cells = [_REGION.fullmatch(name) for name in global_attribution["feature_names"]]
    if global_attribution["kind"] != "image" or not all(cells):
        return None
    coords = [(int(m.group(1)), int(m.group(2))) for m in cells if m]
    grid = np.full((max(r for r, _ in coords) + 1, max(c for _, c in coords) + 1), np.nan)
    for (r, c), value in zip(coords, global_attribution["mean_abs"], strict=True):
        grid[r, c] = value
    fig = Figure(figsize=(4.2, 3.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="magma", vmin=0.0)
    for (r, c), value in np.ndenumerate(grid):
        ax.text(
            c,
            r,
            f"{value:.3f}",
            ha="center",
            va="center",
            fontsize=7,
            color="black" if value > np.nanmax(grid) * 0.6 else "white",
        )
    ax.set_xticks(range(grid.shape[1]))
    ax.set_yticks(range(grid.shape[0]))
    ax.tick_params(labelsize=8)
    ax.set_xlabel("region column", fontsize=9)
    ax.set_ylabel("region row", fontsize=9)
    ax.set_title("Mean |SHAP| by image region", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.85)
    return _png(fig)


def site_heatmap(attribution: Mapping[str, Any], top: int = 12) -> bytes:
    """Sites x top features, each cell the feature's share of that site's attribution.

    Shares rather than raw values, so sites whose models are more or less confident are
    still comparable; flagged sites are labelled in red with their rank correlation.
    """
    glob = attribution["global"]
    order = np.argsort(-np.asarray(glob["mean_abs"]), kind="stable")[:top]
    features = [glob["feature_names"][i] for i in order]
    comparisons = {c["site"]: c for c in attribution["comparisons"]}
    sites = attribution["sites"]
    shares = []
    for s in sites:
        clipped = np.clip(np.asarray(s["mean_abs"], dtype=float), 0.0, None)
        shares.append(clipped[order] / (clipped.sum() or 1.0))
    matrix = np.asarray(shares)
    fig = Figure(
        figsize=(max(6.0, 0.62 * len(features) + 2.6), 0.45 * len(sites) + 2.0),
        dpi=DPI,
        layout="constrained",
    )
    ax = fig.add_subplot()
    image = ax.imshow(matrix, aspect="auto", cmap="Blues", vmin=0.0)
    ax.set_xticks(
        range(len(features)), [literal(f) for f in features], rotation=40, ha="right", fontsize=8
    )
    labels, colours = [], []
    for s in sites:
        c = comparisons.get(s["site"])
        rho = (
            ""
            if c is None or c["rank_correlation"] is None
            else f" (\u03c1={c['rank_correlation']:.2f})"
        )
        flagged = c is not None and c["flagged"]
        labels.append(literal(f"{'FLAGGED ' if flagged else ''}{s['site']}{rho}"))
        colours.append(_FLAG_COLOUR if flagged else "black")
    ax.set_yticks(range(len(sites)), labels, fontsize=8)
    for tick, colour in zip(ax.get_yticklabels(), colours, strict=True):
        tick.set_color(colour)
    threshold = matrix.max() * 0.6 if matrix.size else 0.0
    for (r, c), v in np.ndenumerate(matrix):
        ax.text(
            c,
            r,
            f"{v:.0%}",
            ha="center",
            va="center",
            fontsize=7,
            color="white" if v > threshold else "black",
        )
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of site's attribution")
    ax.set_title("Feature importance by site (top features of the merged model)", fontsize=10)
    return _png(fig)


def _round_ticks(rounds: Sequence[int]) -> list[int]:
    step = max(1, int(np.ceil(len(rounds) / 10)))
    return list(rounds)[::step]


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()
