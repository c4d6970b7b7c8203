r"""Figures of the unfolding pipeline (matplotlib, optional): unfolded spectra, iterations, weight diagnostics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..unfolding.diagnostics import StepDiagnostics

__all__ = ["plot_unfolded", "plot_iterations", "plot_diagnostics"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _steps(ax, edges: torch.Tensor, values: Sequence[float], **style: Any) -> None:
    ax.stairs(list(values), edges.tolist(), **style)


def plot_unfolded(path: Path, hist: Mapping[str, Any], nominal: torch.Tensor, error: torch.Tensor) -> bool:
    """Unfolded (with its replica band) vs truth vs detector level vs prior, and a ratio panel; ``False`` without matplotlib.

    Args:
        path: Output image.
        hist: The ``histogram`` block of the results (edges, truth, detector, prior, ibu, generative).
        nominal: OmniFold's histogram ``(B,)``; error: its total uncertainty ``(B,)``.
    """
    plt = _pyplot()
    if plt is None:
        return False
    edges = torch.tensor(hist["edges"])
    truth = torch.tensor(hist["truth"])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    lo, hi = (nominal - error).tolist(), (nominal + error).tolist()
    top.stairs(hi, edges.tolist(), baseline=lo, fill=True, color="C0", alpha=0.3, label="OmniFold replica band")
    _steps(top, edges, nominal.tolist(), color="C0", lw=1.6, label="OmniFold")
    _steps(top, edges, hist["truth"], color="k", lw=1.2, ls="--", label="truth (data, generator level)")
    _steps(top, edges, hist["detector"], color="C3", lw=1.0, label="data, detector level")
    _steps(top, edges, hist["prior"], color="grey", lw=1.0, ls=":", label="simulation (prior)")
    _steps(top, edges, hist["ibu"], color="C2", lw=1.0, label="binned IBU")
    if hist.get("generative") is not None:
        _steps(top, edges, hist["generative"], color="C1", lw=1.0, label="generative (IcINN)")
    top.set_ylabel("events per bin")
    top.legend(frameon=False, fontsize="small")
    safe = truth.clamp_min(1.0)
    bottom.stairs(((nominal + error) / safe).tolist(), edges.tolist(), baseline=((nominal - error) / safe).tolist(), fill=True,
                  color="C0", alpha=0.3)
    _steps(bottom, edges, (nominal / safe).tolist(), color="C0", lw=1.4)
    _steps(bottom, edges, (torch.tensor(hist["ibu"]) / safe).tolist(), color="C2", lw=1.0)
    if hist.get("generative") is not None:
        _steps(bottom, edges, (torch.tensor(hist["generative"]) / safe).tolist(), color="C1", lw=1.0)
    bottom.axhline(1.0, color="k", lw=0.8, ls="--")
    bottom.set_ylim(0.8, 1.2)
    bottom.set_xlabel("z (generator level)")
    bottom.set_ylabel("ratio to truth")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_iterations(path: Path, moments: Mapping[str, Any]) -> bool:
    """Mean and width of the unfolded distribution per iteration: OmniFold (± data+MC σ), generative, IBU, ideal."""
    plt = _pyplot()
    if plt is None:
        return False
    ideal = torch.tensor(moments["ideal"])
    k = torch.arange(1, ideal.shape[0] + 1)
    sigma = torch.tensor(moments["stat_error"])
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6))
    for j, (ax, name) in enumerate(zip(axes, ("mean", "standard deviation"))):
        ax.plot(k, ideal[:, j], "k-", lw=1.0, label="ideal (quadrature)")
        ax.fill_between(k.tolist(), (ideal[:, j] - sigma[:, j]).tolist(), (ideal[:, j] + sigma[:, j]).tolist(), color="grey",
                        alpha=0.25, label="± stat. (data + simulation)")
        ax.plot(k, torch.tensor(moments["omnifold"])[:, j], "o", color="C0", label="OmniFold")
        ax.plot(k, torch.tensor(moments["ibu"])[:, j], "s", mfc="none", color="C2", label="binned IBU (bin centres)")
        if moments.get("generative") is not None:
            ax.plot(k, torch.tensor(moments["generative"])[:, j], "^", color="C1", label="generative (IcINN)")
        ax.axhline(moments["truth_sample"][j], color="C3", ls=":", lw=1.0, label="truth sample")
        ax.set_xlabel("iteration k")
        ax.set_ylabel(name)
    axes[0].legend(frameon=False, fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_diagnostics(path: Path, diagnostics: Sequence[StepDiagnostics], kinds: Sequence[str]) -> bool:
    """Weight quality per step and iteration: ESS fraction, calibration E_0[r], change between iterations, clipping.

    Members are drawn as a band (min to max) with the nominal (member 0) as a line.
    """
    plt = _pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 4, figsize=(15.0, 3.4))
    for color, step in zip(("C0", "C1", "C2"), ("1", "1b", "2")):
        rows = [d for d in diagnostics if d.step == step]
        if not rows:
            continue
        it = [d.iteration for d in rows]
        panels = [(axes[0], torch.stack([d.effective_sample_size / d.n_events for d in rows])),
                  (axes[1], torch.stack([d.normalisation for d in rows])),
                  (axes[3], torch.stack([d.n_clipped.double() for d in rows]))]
        if all(d.change is not None for d in rows[1:] if step != "1b") and step != "1b":
            changes = [d.change for d in rows if d.change is not None]
            if changes:
                panels.append((axes[2], torch.stack(changes)))
                it_change = [d.iteration for d in rows if d.change is not None]
        for ax, values in panels:
            x = it_change if ax is axes[2] else it
            ax.fill_between(x, values.min(1).values.tolist(), values.max(1).values.tolist(), color=color, alpha=0.2)
            ax.plot(x, values[:, 0].tolist(), "o-", color=color, label=f"step {step}")
    titles = ("effective sample size / events", r"calibration $E_0[r]$", "relative change between iterations", "clipped ratios")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("iteration")
    axes[2].set_yscale("log")
    axes[0].legend(frameon=False, fontsize="small")
    fig.suptitle(f"weight diagnostics: {len(kinds)} members per step (band: all members, line: member 0)", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
