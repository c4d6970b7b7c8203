r"""Checks that make a fit honest: observed data the likelihood can describe, optima inside the range.

A minimiser that converged is not yet a measurement. :class:`~sbilab.stats.UnbinnedLikelihood`
reports a fit as not valid, with the reason, when

* observed events lie outside the **training support** of the learned estimator (the range of
  its training inputs, :mod:`sbilab.estimators.support`): there :math:`\log\hat r` is an
  extrapolation and a handful of such events can move the best fit by more than its error
  (five events at :math:`x = 130` of a resonance trained on :math:`[85, 115]` shift
  :math:`\hat\Gamma` by 0.11). The weighted fraction outside is compared with a threshold;
* observed **weights are negative**: :math:`-2\sum_i w_i\log\hat r(x_i|\theta)` is then not a
  log-likelihood, and its minimum and curvature are not an estimate and its error;
* a free parameter's optimum sits **at a bound** of its range: the minimum of the likelihood
  lies outside the range (or on its edge), HESSE's error there is meaningless (Minuit's bound
  transformation makes it tiny, e.g. 4e-8), and only a one-sided interval can be quoted.

When the estimator recorded no training support (a plain callable, or a file published before
supports were recorded) the support check is *unavailable* and the result says so in ``notes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from iminuit import Minuit

from ..estimators.support import TrainingSupport, training_support
from ..events import Events
from ..exceptions import FitError

__all__ = ["DataQuality", "check_observed", "parameters_at_bound", "bound_issue", "fmin_reason", "AT_BOUND_RTOL"]

AT_BOUND_RTOL = 1e-4
"""A free parameter is at a bound when its optimum lies within this fraction of its range from the bound."""


@dataclass(frozen=True)
class DataQuality:
    """What the observed data allow the fit to claim.

    Attributes:
        outside_support: Weighted fraction of observed events outside the estimator's training
            support; NaN when the check is unavailable.
        negative_weights: Number of observed events with negative weight.
        issues: Reasons that make every fit of these data not valid.
        notes: Things a user should know that do not invalidate the fit.
    """

    outside_support: float
    negative_weights: int
    issues: tuple[str, ...]
    notes: tuple[str, ...]


def check_observed(log_ratio: Any, observed: Events, *, support: TrainingSupport | None = None,
                   max_outside: float = 0.0) -> DataQuality:
    """Check observed events against the estimator behind ``log_ratio`` (see the module docs).

    Args:
        log_ratio: The per-event log-ratio (estimator, bound method, ensemble, or callable).
        observed: The observed events.
        support: The training support to check against (default: the one ``log_ratio``'s
            estimator recorded; give it explicitly for a callable wrapping an estimator).
        max_outside: Largest weighted fraction of events allowed outside the support, in ``[0, 1]``.

    Raises:
        FitError: ``max_outside`` outside ``[0, 1]``.
    """
    if isinstance(max_outside, bool) or not isinstance(max_outside, (int, float)) or not 0.0 <= max_outside <= 1.0:
        raise FitError(f"max_outside = {max_outside!r}: it is the largest fraction of observed events allowed outside the "
                       "estimator's training support, a number in [0, 1] (0: none; 1: switch the check off).")
    issues, notes = [], []
    w = observed.weights
    negative = 0 if w is None else int((w < 0).sum())
    if negative:
        issues.append(f"{negative} of {len(observed)} observed events have negative weights (min {float(w.min()):g}); "
                      "-2 sum w log r is then not a log-likelihood. Fit unweighted data or non-negative weights")
    support = support if support is not None else training_support(log_ratio)
    if support is None:
        fraction = math.nan
        notes.append("training-support check unavailable: the log-ratio records no training range (a plain callable, or an "
                      "estimator published before sbilab recorded one); pass support= to check the observed events")
    else:
        x = observed.x.detach()
        fraction = support.fraction_outside(x, observed.mask, w)
        if fraction > max_outside:
            issues.append(f"{fraction:.3g} of the observed events (weighted) lie outside the estimator's training support "
                          f"({support.describe(x, observed.mask)}; threshold max_outside={max_outside:g}): the learned "
                          "ratio extrapolates there. Remove these events, or train on a sample that covers them")
    return DataQuality(fraction, negative, tuple(issues), tuple(notes))


def parameters_at_bound(names: Sequence[str], values: Mapping[str, float], limits: Sequence[tuple[float, float]],
                        free: Sequence[str], *, rtol: float = AT_BOUND_RTOL) -> list[str]:
    """The free parameters whose value lies within ``rtol`` of their range from a bound."""
    out = []
    for i, name in enumerate(names):
        lo, hi = limits[i]
        if name in free and min(values[name] - lo, hi - values[name]) <= rtol * (hi - lo):
            out.append(name)
    return out


def bound_issue(name: str, value: float, limits: tuple[float, float]) -> str:
    """Why an optimum of ``name`` at ``value``, at a bound of ``limits``, makes the fit not valid."""
    lo, hi = limits
    side, bound = ("lower", lo) if value - lo <= hi - value else ("upper", hi)
    return (f"the optimum of {name!r} ({value:.6g}) lies at the {side} bound {bound:g} of its range: the minimum of the "
            "likelihood is on or beyond the edge and its HESSE error is meaningless. Widen the range, or quote the "
            "one-sided interval of profile_intervals")


def fmin_reason(m: Minuit) -> str:
    """Why MIGRAD's minimum is not valid (call limit, EDM, covariance, parameters at a limit), or ``""``."""
    fmin = m.fmin
    if fmin is None:
        return ""
    reasons = [
        label
        for flag, label in (
            (fmin.has_reached_call_limit, "call limit reached"),
            (fmin.is_above_max_edm, f"EDM {fmin.edm:.3g} above tolerance"),
            (not fmin.has_covariance, "no covariance"),
            (fmin.has_parameters_at_limit, "parameters at limit"),
        )
        if flag
    ]
    return "MIGRAD did not converge: " + ", ".join(reasons) if reasons else ""
