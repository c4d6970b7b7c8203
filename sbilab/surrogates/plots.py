r"""Figures of a surrogate validation (matplotlib, optional: each function returns ``False`` without it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["plot_histograms", "plot_aucs"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_histograms(path: Path, comparisons: Sequence[Any]) -> bool:
    """One column per observable: normalised histograms (surrogate, original) over their ratio with errors and χ²/ndf."""
    plt = _pyplot()
    if plt is None or not comparisons:
        return False
    n = len(comparisons)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 4.6), squeeze=False, sharex="col", gridspec_kw={"height_ratios": [3, 1]})
    for j, h in enumerate(comparisons):
        edges = np.asarray(h.edges)
        width = np.diff(edges)
        centres = 0.5 * (edges[1:] + edges[:-1])
        s, o = np.asarray(h.surrogate), np.asarray(h.original)
        es, eo = np.asarray(h.surrogate_error), np.asarray(h.original_error)
        top, bottom = axes[0, j], axes[1, j]
        top.stairs(o / width, edges, color="k", label="original")
        top.stairs(s / width, edges, color="C1", ls="--", label="surrogate")
        top.set_title(f"{h.name}: $\\chi^2$/ndf = {h.chi2:.1f}/{h.ndf}", fontsize=10)
        top.set_ylabel("density")
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(o > 0, s / o, np.nan)
            err = np.where((o > 0) & (s > 0), ratio * np.sqrt((es / np.where(s > 0, s, 1)) ** 2 + (eo / np.where(o > 0, o, 1)) ** 2), np.nan)
        bottom.errorbar(centres, ratio, yerr=err, fmt=".", color="C1", ms=3)
        bottom.axhline(1.0, color="k", lw=0.8)
        bottom.set_ylim(0.8, 1.2)
        bottom.set_ylabel("sur / orig")
        bottom.set_xlabel(h.name)
        if j == 0:
            top.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_aucs(path: Path, results: Sequence[Any]) -> bool:
    """The two-sample AUCs with their errors, overall and per region, against 0.5."""
    plt = _pyplot()
    if plt is None or not results:
        return False
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(results) + 1.5), 3.4))
    x = np.arange(len(results))
    ax.errorbar(x, [r.auc for r in results], yerr=[r.error for r in results], fmt="o", color="C0", capsize=3)
    ax.axhline(0.5, color="k", lw=0.8)
    ax.set_xticks(x, [r.label for r in results], rotation=20, fontsize=8)
    ax.set_ylabel("two-sample AUC")
    spread = max(0.01, max(abs(r.auc - 0.5) + 2 * r.error for r in results if math.isfinite(r.error)))
    ax.set_ylim(0.5 - 1.2 * spread, 0.5 + 1.2 * spread)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
