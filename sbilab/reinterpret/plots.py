"""The exclusion-contour figure (matplotlib, an optional dependency imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .contour import ExclusionContours

__all__ = ["plot_exclusion"]


def plot_exclusion(contours: ExclusionContours, path: str | Path | None = None, *, title: str | None = None,
                   ax: Any = None) -> Any:
    """Draw the observed contour (red), the expected one (dashed) with its ±1σ band (yellow) and the scanned points.

    Args:
        contours: From :func:`~sbilab.reinterpret.contour.exclusion_contours`.
        path: Write the figure there (PNG, PDF, ... by suffix) when given.
        title: Figure title.
        ax: A matplotlib ``Axes`` to draw into (default: a new figure).

    Returns:
        The matplotlib ``Axes``.

    Raises:
        ImportError: matplotlib is not installed.
    """
    try:
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib.collections import LineCollection, PolyCollection
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError as err:  # pragma: no cover - matplotlib is optional
        raise ImportError("plot_exclusion needs matplotlib: pip install matplotlib") from err
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 4.5))
    points = np.asarray(contours.points)
    excluded = np.asarray(contours.cls_obs) < contours.alpha
    ax.add_collection(PolyCollection([np.asarray(p) for p in contours.band], facecolors="gold", edgecolors="none", alpha=0.8))
    for segments, style in ((contours.expected, dict(colors="k", linestyles="--", linewidths=1.5)),
                            (contours.observed, dict(colors="firebrick", linewidths=2.2))):
        ax.add_collection(LineCollection([np.asarray(s) for s in segments], **style))
    ax.scatter(points[~excluded, 0], points[~excluded, 1], s=6, c="0.6", zorder=3)
    ax.scatter(points[excluded, 0], points[excluded, 1], s=6, c="0.2", marker="x", linewidths=0.6, zorder=3)
    ax.autoscale_view()
    ax.set_xlabel(contours.labels[0])
    ax.set_ylabel(contours.labels[1])
    cl = round(100 * (1 - contours.alpha))
    ax.legend(handles=[Line2D([], [], color="firebrick", lw=2.2, label=f"observed {cl}% CL (CLs)"),
                       Line2D([], [], color="k", ls="--", lw=1.5, label="expected"),
                       Patch(facecolor="gold", alpha=0.8, label=r"expected $\pm1\sigma$"),
                       Line2D([], [], color="0.2", marker="x", ls="", label="excluded point (obs.)"),
                       Line2D([], [], color="0.6", marker="o", ms=3, ls="", label="allowed point (obs.)")],
              loc="upper left", fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10)
    if path is not None:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=90)
        plt.close(ax.figure)
    return ax
