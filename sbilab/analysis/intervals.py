r"""Asymptotic (Fisher) expectations of profile-likelihood intervals.

The intervals themselves come from :func:`sbilab.stats.profile_intervals`. :func:`fisher_widths` gives the expected
:math:`\pm1\sigma` half-widths :math:`\sqrt{[(nI + C)^{-1}]_{jj}}` with Gaussian constraints
:math:`C = \mathrm{diag}(1/s_k^2)` on the nuisance parameters, and with the nuisances fixed.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

__all__ = ["fisher_widths"]


def fisher_widths(fisher: torch.Tensor, n: float, names: Sequence[str],
                  constraints: Mapping[str, tuple[float, float]]) -> dict[str, dict[str, float]]:
    r"""Expected :math:`\pm1\sigma` half-widths from the per-event Fisher information ``fisher (P, P)``.

    Args:
        fisher: Per-event Fisher information at the truth.
        n: Number of events.
        names: Parameter names, in the order of ``fisher``.
        constraints: Gaussian constraints ``{nuisance: (mean, sigma)}``.

    Returns:
        ``{name: {"profiled": ..., "fixed": ...}}``: with the nuisances profiled under their
        constraints, and with the nuisances fixed (only for the other parameters).

    Example:
        >>> f = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> w = fisher_widths(f, 100, ["mu", "eta"], {"eta": (0.0, 1e9)})
        >>> round(w["mu"]["profiled"], 4), round(w["mu"]["fixed"], 4)  # 1/sqrt(75), 1/sqrt(100)
        (0.1155, 0.1)
    """
    f = n * fisher.to(torch.float64).clone()
    nuisance = [i for i, name in enumerate(names) if name in constraints]
    for i in nuisance:
        f[i, i] += 1.0 / constraints[names[i]][1] ** 2
    profiled = torch.linalg.inv(f).diagonal().sqrt()
    keep = [i for i in range(len(names)) if i not in nuisance]
    fixed = torch.linalg.inv(f[keep][:, keep]).diagonal().sqrt()
    out = {}
    for i, name in enumerate(names):
        out[name] = {"profiled": float(profiled[i])}
        if i in keep:
            out[name]["fixed"] = float(fixed[keep.index(i)])
    return out
