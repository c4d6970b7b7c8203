r"""The ABCD background estimate for any two variables, with statistical errors and a closure test.

Two variables :math:`u, v` (raw observables, the mass, classifier scores) and a cut on each split
the events into four regions; by default

=======  ==================  ==================
region   :math:`u`           :math:`v`
=======  ==================  ==================
A        :math:`> c_u`       :math:`> c_v`       (the signal region)
B        :math:`> c_u`       :math:`\le c_v`
C        :math:`\le c_u`     :math:`> c_v`
D        :math:`\le c_u`     :math:`\le c_v`
=======  ==================  ==================

(``above=(False, ...)`` puts the signal side of a variable below its cut). If :math:`u` and
:math:`v` are independent for the background, :math:`N_A = N_B N_C / N_D`. With weighted counts
:math:`N_R = \sum_{i \in R} w_i` and :math:`\sigma_R^2 = \sum_{i \in R} w_i^2`, the estimate and its
statistical error are

.. math:: \hat N_A = \frac{N_B N_C}{N_D}, \qquad
          \frac{\sigma(\hat N_A)^2}{\hat N_A^2} = \frac{\sigma_B^2}{N_B^2} + \frac{\sigma_C^2}{N_C^2} + \frac{\sigma_D^2}{N_D^2}.

**Closure.** On a background-only sample (simulation, or a validation region) the ratio
:math:`\kappa = \hat N_A / N_A = N_B N_C / (N_A N_D)` measures the bias of the method — its
population value :math:`P_B P_C / (P_A P_D)` is 1 for independent variables and e.g. 0.1984 for a
bivariate normal with ρ = 0.5 cut at 1 (:func:`~sbilab.anomaly.references.bivariate_normal_abcd`);
its error adds :math:`\sigma_A^2/N_A^2` to the sum above. The result reports κ, its error and the
pull :math:`(\kappa - 1)/\sigma_\kappa`: a correlation bias is shown, never hidden or corrected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..exceptions import ConfigError, RegionError, ShapeMismatchError
from .results import NestedResult

__all__ = ["REGIONS", "abcd_regions", "AbcdCounts", "abcd_counts", "AbcdEstimate", "abcd_estimate", "threshold_at_efficiency"]

REGIONS = ("A", "B", "C", "D")


def _array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as err:
        raise ShapeMismatchError(f"{name} must be an array of numbers, got {type(value).__name__} ({err}).") from None
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ShapeMismatchError(f"{name} must have shape (N,) (or (N, 1)), got {array.shape}.")
    if not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array))
        raise ShapeMismatchError(f"{name} has {bad.size} non-finite values (first at row {bad[0]}); remove or fix these events.")
    return array


def abcd_regions(u: Any, v: Any, *, cut_u: float, cut_v: float, above: tuple[bool, bool] = (True, True)) -> np.ndarray:
    """Region index of each event, ``(N,)`` ints: 0 = A, 1 = B, 2 = C, 3 = D (see the module table).

    Args:
        u, v: ``(N,)`` the two variables.
        cut_u, cut_v: The cuts.
        above: Whether the signal side of u (of v) lies above its cut.
    """
    a, b = _array(u, "u"), _array(v, "v")
    if a.size != b.size:
        raise ShapeMismatchError(f"abcd_regions: u has {a.size} events and v {b.size}; give both variables for every event.")
    su = a > cut_u if above[0] else a <= cut_u
    sv = b > cut_v if above[1] else b <= cut_v
    return np.where(su, np.where(sv, 0, 1), np.where(sv, 2, 3))


@dataclass(frozen=True)
class AbcdCounts(NestedResult):
    """Weighted counts ``N_R`` and their variances ``sum w^2`` per region, and raw event counts."""

    n: dict[str, float]
    variance: dict[str, float]
    events: dict[str, int]


def abcd_counts(u: Any, v: Any, *, cut_u: float, cut_v: float, weights: Any = None, above: tuple[bool, bool] = (True, True)) -> AbcdCounts:
    """Weighted counts in the four regions (no check for empty regions; see :func:`abcd_estimate`)."""
    region = abcd_regions(u, v, cut_u=cut_u, cut_v=cut_v, above=above)
    w = np.ones(region.size) if weights is None else _array(weights, "weights")
    if w.size != region.size:
        raise ShapeMismatchError(f"abcd_counts: weights have {w.size} entries for {region.size} events.")
    n = {r: float(w[region == i].sum()) for i, r in enumerate(REGIONS)}
    var = {r: float((w[region == i] ** 2).sum()) for i, r in enumerate(REGIONS)}
    events = {r: int((region == i).sum()) for i, r in enumerate(REGIONS)}
    return AbcdCounts(n=n, variance=var, events=events)


@dataclass(frozen=True)
class AbcdEstimate(NestedResult):
    r"""An ABCD estimate of the background in region A.

    Attributes:
        counts: The weighted counts per region.
        predicted: :math:`\hat N_A = N_B N_C / N_D`.
        predicted_error: Its statistical error.
        observed: :math:`N_A` in the same sample.
        closure: :math:`\kappa = \hat N_A / N_A` (nan if region A is empty); meaningful on background-only samples.
        closure_error: Statistical error of κ.
        pull: :math:`(\kappa - 1)/\sigma_\kappa`.
        cut_u, cut_v: The cuts used.
    """

    counts: AbcdCounts
    predicted: float
    predicted_error: float
    observed: float
    closure: float
    closure_error: float
    pull: float
    cut_u: float
    cut_v: float

    def closes(self, n_sigma: float = 2.0) -> bool:
        """Whether κ is consistent with 1 within ``n_sigma`` statistical errors."""
        return bool(abs(self.pull) <= n_sigma)


def abcd_estimate(u: Any, v: Any, *, cut_u: float, cut_v: float, weights: Any = None, above: tuple[bool, bool] = (True, True),
                  require_a: bool = False) -> AbcdEstimate:
    r"""The ABCD prediction :math:`N_B N_C / N_D` of region A, its error and the closure ratio.

    Args:
        u, v: ``(N,)`` the two variables (e.g. a classifier score and the mass).
        cut_u, cut_v: The cuts (for a score threshold at a background efficiency use
            :func:`threshold_at_efficiency`).
        weights: ``(N,)`` event weights (default ones).
        above: Whether the signal side of each variable lies above its cut.
        require_a: Refuse an empty region A too (needed for a closure test).

    Raises:
        RegionError: region B, C or D (or A with ``require_a``) holds no events or no positive
            weight; the message gives all four counts and says to loosen the cuts.
        ShapeMismatchError: u, v, weights have different lengths or non-finite values.

    Example:
        >>> g = np.random.default_rng(0)
        >>> u, v = g.normal(size=200_000), g.normal(size=200_000)
        >>> est = abcd_estimate(u, v, cut_u=1.0, cut_v=1.0)
        >>> est.closes(), abs(est.closure - 1) < 3 * est.closure_error
        (True, True)
    """
    counts = abcd_counts(u, v, cut_u=cut_u, cut_v=cut_v, weights=weights, above=above)
    needed = REGIONS if require_a else REGIONS[1:]
    empty = [r for r in needed if not counts.n[r] > 0]
    if empty:
        layout = ", ".join(f"{r}: {counts.events[r]} events (weight {counts.n[r]:g})" for r in REGIONS)
        raise RegionError(f"abcd_estimate: region(s) {empty} are empty at cut_u = {cut_u:g}, cut_v = {cut_v:g} ({layout}); "
                          "every control region needs events with positive weight: loosen the cuts or use more events.")
    n, var = counts.n, counts.variance
    predicted = n["B"] * n["C"] / n["D"]
    rel2 = sum(var[r] / n[r] ** 2 for r in "BCD")
    observed = n["A"]
    if observed > 0:
        closure = predicted / observed
        closure_error = closure * math.sqrt(rel2 + var["A"] / observed**2)
        pull = (closure - 1.0) / closure_error
    else:
        closure = closure_error = pull = math.nan
    return AbcdEstimate(counts=counts, predicted=predicted, predicted_error=predicted * math.sqrt(rel2), observed=observed,
                        closure=closure, closure_error=closure_error, pull=pull, cut_u=float(cut_u), cut_v=float(cut_v))


def threshold_at_efficiency(score: Any, efficiency: float, *, weights: Any = None) -> float:
    r"""The cut :math:`c` with a (weighted) fraction ``efficiency`` of the events above it: :math:`\sum_{s_i > c} w_i = \epsilon \sum_i w_i`.

    Args:
        score: ``(N,)`` e.g. a classifier's output on background events.
        efficiency: In (0, 1).
        weights: ``(N,)`` (default ones).

    Raises:
        ConfigError: ``efficiency`` not in (0, 1).
    """
    if not 0.0 < float(efficiency) < 1.0:
        raise ConfigError(f"threshold_at_efficiency: efficiency = {efficiency} must lie in (0, 1).")
    s = _array(score, "score")
    w = np.ones(s.size) if weights is None else _array(weights, "weights")
    order = np.argsort(-s, kind="stable")
    cum = np.cumsum(w[order]) / w.sum()
    k = int(np.searchsorted(cum, efficiency, side="left"))
    k = min(k, s.size - 1)
    if k + 1 < s.size:
        return float(0.5 * (s[order][k] + s[order][k + 1]))
    return float(s[order][k] - 1e-12 * max(1.0, abs(s[order][k])))
