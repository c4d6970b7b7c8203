r"""Mass sculpting: how much a cut on a classifier changes the background's mass distribution.

A classifier that learned the mass (directly, or through features correlated with it) sculpts
the background: after a cut, the background's :math:`m` distribution takes the shape of the
signal, fakes a bump, and breaks ABCD and sideband fits. DisCo (arXiv:2001.05310) quantifies it
by the Jensen–Shannon divergence between the background's :math:`m` histogram before and after a
cut at a fixed background efficiency (50 % here by default):

.. math:: \mathrm{JSD}(p, q) = \tfrac12 \sum_k p_k \log_2\frac{p_k}{r_k} + \tfrac12 \sum_k q_k \log_2\frac{q_k}{r_k},
          \qquad r = \tfrac12 (p + q),

in bits (0 for identical, 1 for disjoint histograms). The binning is fixed by quantiles of the
background's :math:`m` before the cut, so every bin starts with the same weight. A finite sample
gives a positive JSD even without sculpting: compare a
classifier with the number for a random cut, :func:`js_divergence_floor`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..exceptions import ConfigError, ShapeMismatchError
from .abcd import threshold_at_efficiency

__all__ = ["js_divergence", "mass_sculpting", "js_divergence_floor"]


def _np(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    array = np.asarray(value, dtype=float)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or not np.isfinite(array).all():
        raise ShapeMismatchError(f"{name} must be finite values of shape (N,), got shape {array.shape}.")
    return array


def js_divergence(p: Any, q: Any) -> float:
    """Jensen–Shannon divergence in bits of two histograms (normalised here), ``(K,)`` each.

    Example:
        >>> js_divergence([1, 0], [0, 1]), js_divergence([1, 2, 3], [2, 4, 6])
        (1.0, 0.0)
    """
    a, b = _np(p, "p"), _np(q, "q")
    if a.size != b.size or (a < 0).any() or (b < 0).any() or not (a.sum() > 0 and b.sum() > 0):
        raise ConfigError("js_divergence: p and q must be histograms of the same bins with non-negative, not all zero, contents.")
    a, b = a / a.sum(), b / b.sum()
    r = 0.5 * (a + b)

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / r[nz])))

    return max(0.0, 0.5 * kl(a) + 0.5 * kl(b))


def _histograms(m: np.ndarray, keep: np.ndarray, w: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.quantile(m, np.linspace(0.0, 1.0, bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    before = np.histogram(m, edges, weights=w)[0]
    after = np.histogram(m[keep], edges, weights=w[keep])[0]
    return before, after


def mass_sculpting(m: Any, score: Any, *, weights: Any = None, background_efficiency: float = 0.5, bins: int = 20) -> float:
    r"""JSD (bits) of the background's m histogram before and after the cut keeping ``background_efficiency`` of it.

    Args:
        m: ``(N,)`` background masses.
        score: ``(N,)`` classifier scores of the same events (higher = more signal-like).
        weights: ``(N,)`` event weights.
        background_efficiency: Fraction kept by the cut, in (0, 1).
        bins: Number of equal-population bins of m.

    Raises:
        ShapeMismatchError: m and score differ in length or hold non-finite values.
        ConfigError: ``background_efficiency`` outside (0, 1) or fewer than 2 bins.
    """
    mm, s = _np(m, "m"), _np(score, "score")
    if mm.size != s.size:
        raise ShapeMismatchError(f"mass_sculpting: m has {mm.size} events and score {s.size}.")
    if bins < 2:
        raise ConfigError(f"mass_sculpting: bins = {bins} must be at least 2.")
    w = np.ones_like(mm) if weights is None else _np(weights, "weights")
    cut = threshold_at_efficiency(s, background_efficiency, weights=w)
    return js_divergence(*_histograms(mm, s > cut, w, bins))


def js_divergence_floor(n_events: int, *, background_efficiency: float = 0.5, bins: int = 20) -> float:
    r"""Expected JSD (bits) of an *unsculpting* cut from finite statistics alone: :math:`\frac{(K-1)(1-\epsilon)}{8 \ln 2\, N \epsilon}`.

    For nearby histograms :math:`\mathrm{JSD}(p, q) \approx \sum_k (q_k - p_k)^2 / (8 p_k)` nats; a random
    subset of :math:`n = N\epsilon` of the :math:`N` events has bin fractions with variance
    :math:`p_k(1-p_k)(1-\epsilon)/n` around the parent's :math:`p_k`, so the expectation is this floor
    (:math:`K` bins). A classifier's JSD well above it is sculpting.
    """
    if n_events < 1 or not 0.0 < background_efficiency < 1.0:
        raise ConfigError("js_divergence_floor: needs n_events >= 1 and background_efficiency in (0, 1).")
    eps = float(background_efficiency)
    return (bins - 1) * (1 - eps) / (8 * math.log(2) * n_events * eps)
