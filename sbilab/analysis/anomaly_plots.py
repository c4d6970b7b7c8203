"""Figures of the anomaly pipeline (matplotlib, optional): sculpting, closure, CLs, SIC curves, the bump hunt.

Every function returns ``False`` without matplotlib and ``True`` after writing its image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..anomaly import AbcdInference, BumpHunt, DecorrelationScan, MassWindow, SicStudy

__all__ = ["plot_sculpting", "plot_closure", "plot_cls", "plot_sic", "plot_bump"]


def _figure(path: Path, draw: Callable[[Any], None], ncols: int = 1, width: float = 5.5) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4.2), squeeze=False)
    draw(axes[0])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_sculpting(path: Path, scan: DecorrelationScan) -> bool:
    """Background m distribution before and after the 50 % cut, per λ and for the exact classifier (normalised)."""
    edges = np.asarray(scan.mass_edges)
    centres, widths = 0.5 * (edges[1:] + edges[:-1]), np.diff(edges)

    def draw(axes: Any) -> None:
        ax = axes[0]
        before = np.asarray(scan.mass_before_cut)
        ax.step(centres, before / before.sum() / widths, where="mid", color="k", lw=2, label="before the cut")
        for point in (*scan.points, scan.exact):
            after = np.asarray(point.mass_after_cut)
            label = "exact classifier" if math.isnan(point.lam) else f"λ = {point.lam:g} (JSD {point.sculpting:.1e})"
            ax.step(centres, after / after.sum() / widths, where="mid", ls="--" if math.isnan(point.lam) else "-", label=label)
        ax.set_xlabel("m (background)")
        ax.set_ylabel("density after keeping 50 % of the background")
        ax.set_title("mass sculpting vs DisCo λ")
        ax.legend(fontsize=7)

    return _figure(path, draw)


def plot_closure(path: Path, scan: DecorrelationScan) -> bool:
    """ABCD closure (with errors) and background rejection against λ, with the exact references."""
    xs = np.array([p.lam for p in scan.points])
    positive = xs[xs > 0]
    threshold = float(positive.min()) if positive.size else 1.0

    def draw(axes: Any) -> None:
        ax, bx = axes
        ax.errorbar(xs, [p.closure for p in scan.points], [p.closure_error for p in scan.points], fmt="o-", label="DisCo")
        ax.axhline(1.0, color="k", lw=0.8, label="closure (independent)")
        ax.axhline(scan.exact_closure, color="C3", ls="--", label="exact classifier (quadrature)")
        ax.set_xscale("symlog", linthresh=threshold)
        ax.set_xlabel("λ")
        ax.set_ylabel("ABCD closure  N_B N_C / (N_A N_D)")
        ax.legend(fontsize=8)
        bx.plot(xs, [p.rejection for p in scan.points], "o-", label="DisCo")
        bx.axhline(scan.optimal_rejection, color="C3", ls="--", label="optimal (exact)")
        bx.axhline(scan.decorrelated_rejection, color="C2", ls=":", label="best m-independent (exact)")
        bx.set_xscale("symlog", linthresh=threshold)
        bx.set_xlabel("λ")
        bx.set_ylabel("background rejection at 50 % signal efficiency")
        bx.legend(fontsize=8)

    return _figure(path, draw, ncols=2, width=5.0)


def plot_cls(path: Path, results: Mapping[float, AbcdInference], highlight: float) -> bool:
    """Observed CLs against μ for the ABCD pseudo-experiments, with their expected limits."""
    def draw(axes: Any) -> None:
        ax = axes[0]
        for i, (lam, res) in enumerate(results.items()):
            color = f"C{i}"
            ax.plot(res.limit.scan, res.limit.cls_obs, "-", color=color, lw=2 if lam == highlight else 1,
                    label=f"λ = {lam:g}: observed limit {res.limit.observed:.2f}")
            ax.axvline(res.limit.expected[2], color=color, ls="--", lw=0.8)
            ax.axvspan(res.limit.expected[1], res.limit.expected[3], color=color, alpha=0.1)
        ax.axhline(0.05, color="k", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_ylim(1e-3, 1.1)
        ax.set_xlabel("μ")
        ax.set_ylabel("CLs (asymptotic, pyhf)")
        ax.set_title("ABCD likelihood; dashed: expected, band ±1σ")
        ax.legend(fontsize=8)

    return _figure(path, draw)


def plot_sic(path: Path, study: SicStudy) -> bool:
    """SIC against background efficiency per method and signal fraction, with the exact likelihood ratio."""
    fractions = sorted({f for per in study.curves.values() for f in per})

    def draw(axes: Any) -> None:
        for ax, f in zip(axes, fractions):
            opt = study.optimal
            ax.plot(opt.background_efficiency, opt.sic, "k-", lw=2, label="exact likelihood ratio")
            for i, (method, per) in enumerate(study.curves.items()):
                c = per[f]
                ax.plot(c.background_efficiency, c.sic, f"C{i}-", label=method)
                ax.fill_between(c.background_efficiency, c.sic - c.sic_error, c.sic + c.sic_error, color=f"C{i}", alpha=0.2)
            ax.axvline(study.background_efficiency, color="grey", ls=":")
            ax.set_xscale("log")
            ax.set_xlabel("background efficiency")
            ax.set_ylabel("SIC = ε_s / √ε_b")
            ax.set_title(f"S/B = {f:g} in the signal region")
            ax.legend(fontsize=7)

    return _figure(path, draw, ncols=max(len(fractions), 1), width=4.5)


def plot_bump(path: Path, hunt: BumpHunt, window: MassWindow) -> bool:
    """Masses of the events passing the anomaly cut, with the sideband fit's SR prediction."""
    edges = np.asarray(hunt.mass_edges)
    centres = 0.5 * (edges[1:] + edges[:-1])

    def draw(axes: Any) -> None:
        ax = axes[0]
        counts = np.asarray(hunt.mass_passing)
        ax.errorbar(centres, counts, np.sqrt(np.maximum(counts, 1.0)), fmt="ko", ms=3, label="passing the anomaly cut")
        ax.axvspan(window.lo, window.hi, color="C1", alpha=0.15, label="signal region")
        sb = hunt.sideband
        width = edges[1] - edges[0]
        per_bin = sb.predicted * width / (window.hi - window.lo)
        ax.hlines(per_bin, window.lo, window.hi, color="C0", label=f"sideband fit: {sb.predicted:.1f} ± {sb.predicted_error:.1f} in SR")
        ax.set_xlabel("m")
        ax.set_ylabel("events per bin")
        ax.set_title(f"{hunt.method}: {hunt.observed} in SR, Z = {hunt.significance.significance:.2f}")
        ax.legend(fontsize=8)

    return _figure(path, draw)
