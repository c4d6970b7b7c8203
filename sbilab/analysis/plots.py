r"""Profile-likelihood figures of the analysis pipelines (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from ..stats import ProfileResult

__all__ = ["plot_profiles"]


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
