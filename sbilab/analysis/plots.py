r"""Profile-likelihood figures of the analysis pipelines (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ..stats import ProfileResult

__all__ = ["plot_profiles", "plot_limits"]


def plot_profiles(path: Path, curves: Mapping[str, Sequence[tuple[ProfileResult, str, str]]], levels: Sequence[float],
                  title: str) -> bool:
    r"""One panel per parameter with several :math:`-2\Delta\log L` profiles; returns ``False`` without matplotlib.

    Args:
        path: Output image.
        curves: ``{parameter: [(profile, matplotlib style, label), ...]}``.
        levels: Horizontal threshold lines (e.g. 1 and 3.84).
        title: Figure title.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(curves)
    fig, axes = plt.subplots(1, len(names), figsize=(4.8 * len(names), 4.0), squeeze=False)
    top = max(4 * min(levels), 4.0, 1.5 * max(levels))
    for ax, name in zip(axes[0], names):
        for profile, style, label in curves[name]:
            ax.plot(profile.values, profile.delta_nll, style, label=label)
        for level in levels:
            ax.axhline(level, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(name)
        ax.set_ylabel(r"$-2\Delta\log L$ (profiled)")
        ax.set_ylim(0, top)
        ax.legend(frameon=False, fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_limits(path: Path, results: Mapping[str, dict], reference: Mapping[str, float], cl: float, title: str,
                labels: Mapping[str, tuple[str, str]]) -> bool:
    """CLs against μ (observed solid, expected median dashed) and the limits per observable; ``False`` without matplotlib.

    ``labels`` maps each key of ``results`` to ``(colour, label)``.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 4.0))
    for key, r in results.items():
        color, label = labels[key]
        left.plot(r["scan"]["mu"], r["scan"]["cls_obs"], "-", color=color, label=f"{label}, observed")
        left.plot(r["scan"]["mu"], r["scan"]["cls_expected_median"], "--", color=color, label=f"{label}, expected")
    left.axhline(1 - cl, color="grey", lw=0.8, ls=":")
    left.set(xlabel=r"signal strength $\mu$", ylabel=r"CL$_s$", yscale="log", ylim=(1e-3, 1.1))
    left.legend(frameon=False, fontsize="x-small")
    for i, (key, r) in enumerate(results.items()):
        e = r["expected_limits"]
        right.fill_betweenx([i - 0.3, i + 0.3], e["-2"], e["+2"], color="gold", lw=0)
        right.fill_betweenx([i - 0.3, i + 0.3], e["-1"], e["+1"], color="limegreen", lw=0)
        right.plot([e["median"]] * 2, [i - 0.3, i + 0.3], "k--", label="expected (median, ±1σ, ±2σ)" if i == 0 else None)
        right.plot([r["observed_limit"]], [i], "ko", label="observed" if i == 0 else None)
    right.axvline(reference["expected_limit"], color="grey", ls=":", label="expected, unbinned exact, stat. only")
    right.set_yticks(range(len(results)), [labels[k][1] for k in results])
    right.set(xlabel=rf"{cl:.0%} CL upper limit on $\mu$")
    right.set_ylim(-0.5, len(results) + 0.3)
    right.legend(frameon=False, fontsize="x-small", loc="upper right", ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
