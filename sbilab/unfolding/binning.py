r"""Bin indices and weighted histograms of many weight columns at once.

One observable's bin index is found by a binary search of its edges; a multi-dimensional
bin is the row-major flat index of its per-observable bins. A histogram of ``K`` weight
columns (replicas, systematics) is one ``index_add`` over the events, so a thousand replica
histograms cost about as much as one.

Conventions (those of :func:`numpy.histogram`): bins are half-open ``[e_i, e_{i+1})`` except the
last, which includes its upper edge; values outside the edges (and NaN) get index ``-1`` and
enter no bin.

Example:
    >>> edges = torch.tensor([0.0, 1.0, 2.0])
    >>> bin_index(torch.tensor([-0.5, 0.0, 1.5, 2.0, 3.0]), edges).tolist()
    [-1, 0, 1, 1, -1]
    >>> bin_sums(torch.tensor([0, 1, 1, -1]), torch.tensor([[1.0, 2.0, 3.0, 4.0]]), 2).tolist()
    [[1.0, 5.0]]
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..exceptions import ConfigError

__all__ = ["as_edges", "bin_index", "flat_bin_index", "bin_sums"]


def as_edges(edges: Tensor | Sequence[float], name: str = "edges") -> Tensor:
    """``edges`` as a float64 tensor ``(B + 1,)``, checked to be finite and strictly increasing.

    Raises:
        ConfigError: fewer than two edges, non-finite or not strictly increasing edges.
    """
    e = torch.as_tensor(edges, dtype=torch.float64).reshape(-1)
    if e.numel() < 2 or not bool(torch.isfinite(e).all()) or not bool((e[1:] > e[:-1]).all()):
        raise ConfigError(f"{name} must be at least two finite, strictly increasing bin edges; got {e.tolist()[:8]}.")
    return e


def bin_index(values: Tensor, edges: Tensor) -> Tensor:
    """Bin of each value, ``(N,)`` long; ``-1`` outside ``[edges[0], edges[-1]]`` or NaN.

    Args:
        values: ``(N,)``.
        edges: ``(B + 1,)`` strictly increasing.
    """
    e = edges.to(device=values.device, dtype=torch.float64)
    n_bins = e.numel() - 1
    v = torch.nan_to_num(values.to(torch.float64), nan=float(e[0]) - 1.0).contiguous()  # NaN -> outside
    width = (e[-1] - e[0]) / n_bins
    if bool(((e.diff() - width).abs() <= 1e-9 * width).all()):  # equal widths: arithmetic, then an exact one-step fix
        idx = ((v - e[0]) / width).floor().clamp(0, n_bins - 1).long()
        idx = idx - (v < e[idx]).long() + (v >= e[idx + 1]).long()
    else:
        idx = torch.searchsorted(e, v, right=True) - 1
    inside = (v >= e[0]) & (v <= e[-1])
    return torch.where(inside, idx.clamp(max=n_bins - 1), -1)


def flat_bin_index(values: Sequence[Tensor], edges: Sequence[Tensor]) -> Tensor:
    """Row-major flat bin of several observables, ``(N,)`` long; ``-1`` if any is outside.

    Args:
        values: One ``(N,)`` tensor per observable.
        edges: One ``(B_d + 1,)`` edge tensor per observable.
    """
    flat = torch.zeros_like(values[0], dtype=torch.long)
    outside = torch.zeros_like(values[0], dtype=torch.bool)
    for v, e in zip(values, edges):
        idx = bin_index(v, e)
        outside |= idx < 0
        flat = flat * (e.numel() - 1) + idx.clamp_min(0)
    return torch.where(outside, -1, flat)


def bin_sums(index: Tensor, weights: Tensor, n_bins: int) -> Tensor:
    """Sums of weights per bin for every weight column, ``(..., n_bins)``.

    Args:
        index: Bin of each event, ``(N,)`` long; ``-1`` enters no bin.
        weights: ``(..., N)`` (any number of leading columns, e.g. replicas).
        n_bins: Number of bins.
    """
    idx = torch.where(index >= 0, index, n_bins).to(weights.device)  # outside -> one spare bin, dropped
    out = torch.zeros((*weights.shape[:-1], n_bins + 1), dtype=weights.dtype, device=weights.device)
    return out.index_add_(-1, idx, weights)[..., :n_bins]
