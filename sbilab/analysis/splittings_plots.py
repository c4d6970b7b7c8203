"""Plots of the ``qcd_splittings`` pipeline: observables at several θ, learned vs exact log r on the toy, the posterior."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..simulators.shower import OBSERVABLES, PartonShower

__all__ = ["plot_all"]


def plot_all(out: Path, shower: PartonShower, truth: Tensor, predictions: dict[str, Tensor], draws: Tensor, n_events: int, *,
             names: Sequence[str], set_size: int) -> bool:
    """Write ``observables.png``, ``toy_log_ratio.png`` and ``posterior.png`` to ``out``; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    high, low = shower.space.high.float(), shower.space.low.float()
    points = {"truth": truth, "D + 0.4": torch.minimum(truth + torch.tensor([0.4, 0.0, 0.0]), high),
              "F - 0.4": torch.maximum(truth + torch.tensor([0.0, -0.4, 0.0]), low)}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for label, point in points.items():
        x = shower.simulate(n_events, theta=point, generator=torch.Generator().manual_seed(5)).x
        for ax, col, bins in zip(axes, ("tau", "log_y23", "multiplicity"), (40, 40, range(2, 16))):
            ax.hist(x[:, OBSERVABLES.index(col)].numpy(), bins=bins, histtype="step", density=True, label=label)
            ax.set_xlabel(col)
    axes[0].legend(frameon=False)
    fig.suptitle("parton-level observables at several (D, F, C) (no hadronisation)")
    fig.tight_layout()
    fig.savefig(out / "observables.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for method, values in predictions.items():
        if method != "exact":
            ax.plot(predictions["exact"].numpy(), values.numpy(), ".", ms=2, label=method.upper())
    lim = float(predictions["exact"].abs().max())
    ax.plot([-lim, lim], [-lim, lim], "k-", lw=0.8)
    ax.set(xlabel=r"exact $\log r(x|\theta)$", ylabel=r"learned $\log\hat r(x|\theta)$", title="primary-emission toy")
    ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(out / "toy_log_ratio.png", dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(names), figsize=(12, 3.6))
    for i, (ax, name) in enumerate(zip(axes, names)):
        ax.hist(draws[:, i].numpy(), bins=40, density=True, histtype="stepfilled", alpha=0.6)
        ax.axvline(float(truth[i]), color="k", ls="--", label="truth")
        ax.set_xlabel(name)
    axes[0].legend(frameon=False)
    fig.suptitle(f"cINN posterior from {set_size} observed events")
    fig.tight_layout()
    fig.savefig(out / "posterior.png", dpi=110)
    plt.close(fig)
    return True
