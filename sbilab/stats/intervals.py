r"""Profile-likelihood intervals: :func:`profile_intervals`, the one routine behind every interval.

The interval of a parameter :math:`\theta_j` at confidence level ``cl`` is the set where the
profile :math:`-2\Delta\log L(\theta_j) = \min_{\theta_{\neq j}} -2\log L - (-2\log L)_{\min}`
lies below the :math:`\chi^2_1` quantile of ``cl`` (Wilks). Its ends are bracketed in one of
two ways and then found by root finding (Brent) on the profile, the other free parameters
re-minimised at every trial point:

* **stepping out** from the best fit (no grid): steps that start at the parabolic error (at
  least a thousandth of the parameter's range, since HESSE's error of an optimum at a bound is
  meaningless, e.g. 4e-8) and double until the threshold is crossed or the parameter's bound is
  reached — cheap (a few fits per end, at most about 12 + log2 of the range in errors), for one
  connected region;
* **a grid** spanning the range of interest: the profile on the grid (which is returned, e.g.
  for plots) brackets every crossing, so disjoint allowed regions — common for quadratic EFT
  likelihoods — are not missed: the reported interval is their hull and ``disjoint`` says so
  (regions narrower than the grid step can be missed, except the one around the best fit,
  which is always a scan point). If the profile dips below the global minimum (a minimiser
  stuck in a flat valley), the global fit is redone from the lowest profile point and the scan
  repeated.

An end that does not cross the threshold is the bound of the range (grid end or parameter
bound), flagged by ``lo_at_bound`` / ``hi_at_bound``: the interval is one-sided there. An
optimum at a bound (a fit reported not valid for that reason alone) still gets its one-sided
interval; a fit whose minimiser failed does not.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..exceptions import FitError, OneSidedIntervalWarning
from .results import FitResult, ProfileResult



class _Profiled(Protocol):
    """What the interval routines use of a likelihood (:class:`~sbilab.stats.UnbinnedLikelihood`; no import, no cycle)."""

    names: Sequence[str]
    limits: Sequence[tuple[float, float]]
    model: Any

    def fit(self, *args: Any, **kwargs: Any) -> FitResult: ...

    def profile(self, *args: Any, **kwargs: Any) -> ProfileResult: ...

    def _check_scan(self, name: str, grid: Any) -> np.ndarray: ...

__all__ = ["Interval", "profile_intervals", "warn_one_sided", "ONE_SIGMA", "MIN_STEP_FRACTION"]

ONE_SIGMA = 0.6826894921370859
"""Confidence level of a ±1σ Gaussian interval."""

MIN_STEP_FRACTION = 1e-3
"""Smallest first step of the stepping-out search, as a fraction of the parameter's range."""


@dataclass(frozen=True)
class Interval:
    """A profile-likelihood interval ``[lo, hi]`` at confidence level ``cl``.

    Attributes:
        cl: Confidence level.
        lo, hi: Ends; a bound of the range when the threshold is not crossed there.
        lo_at_bound, hi_at_bound: Whether that end is a bound (not a crossing).
        disjoint: Whether the allowed set has several separate regions (``[lo, hi]`` is their
            hull); only a grid scan can tell, stepping out reports ``False``.
    """

    cl: float
    lo: float
    hi: float
    lo_at_bound: bool
    hi_at_bound: bool
    disjoint: bool

    def to_dict(self) -> dict:
        """The fields by name (a missing end stays NaN)."""
        return {"cl": self.cl, "lo": self.lo, "hi": self.hi, "lo_at_bound": self.lo_at_bound,
                "hi_at_bound": self.hi_at_bound, "disjoint": self.disjoint}


def _brent(excess: Callable[[float], float], a: float, b: float, xtol: float) -> float:
    from scipy.optimize import brentq

    return float(brentq(excess, min(a, b), max(a, b), xtol=xtol))


def _stepping(nll: _Profiled, name: str, cl: float, best: FitResult) -> Interval:
    from scipy.stats import chi2

    i = nll.names.index(name)
    level = float(chi2.ppf(cl, 1))
    centre = best.best[name]
    bounds = nll.limits[i]
    error = best.errors[name] if math.isfinite(best.errors[name]) else 0.0
    step = max(error, MIN_STEP_FRACTION * (bounds[1] - bounds[0]))

    def excess(v: float) -> float:
        return nll.fit(start=best.best, fixed={name: v}, polish=False).nll_min - best.nll_min - level

    ends, at_bound = [], []
    for sign, bound in ((-1.0, bounds[0]), (1.0, bounds[1])):
        inner, outer, stride = centre, centre + sign * step * math.sqrt(level), step
        while (sign * (outer - bound) < 0) and excess(outer) < 0:  # doubling strides: reaches the bound in O(log) fits
            inner, outer, stride = outer, outer + sign * stride, 2.0 * stride
        if sign * (outer - bound) >= 0:
            outer = bound
            if excess(outer) < 0:
                ends.append(bound)
                at_bound.append(True)
                continue
        ends.append(_brent(excess, inner, outer, 1e-6 * max(step, 1e-12)))
        at_bound.append(False)
    return Interval(float(cl), ends[0], ends[1], at_bound[0], at_bound[1], False)


def _grid(nll: _Profiled, name: str, grid: np.ndarray, cls: Sequence[float], best: FitResult
          ) -> tuple[ProfileResult, list[Interval]]:
    from scipy.stats import chi2

    base = grid
    for _ in range(3):  # a profile point below the global minimum means the minimiser missed it: refit from there
        centre = best.best[name]
        grid = base
        if base[0] <= centre <= base[-1] and not np.isclose(base, centre, rtol=0, atol=1e-9 * (base[-1] - base[0])).any():
            grid = np.sort(np.append(base, centre))  # the minimum is always a scan point: intervals narrower than the grid step
        profile = nll.profile(name, grid, best=best)
        deltas = np.asarray(profile.delta_nll)
        if not np.nanmin(deltas) < -1e-3:
            break
        better = nll.fit(start=best.best, fixed={name: float(grid[int(np.nanargmin(deltas))])}, polish=False)
        best = nll.fit(start=better.best)
    x = np.asarray(profile.values)
    y = np.minimum(np.asarray(profile.delta_nll), 1e6)
    y = np.where(np.isfinite(y), y, 1e6)
    out = []
    for cl in cls:
        level = float(chi2.ppf(cl, 1))

        def excess(v: float) -> float:
            return nll.fit(start=best.best, fixed={name: v}, polish=False).nll_min - best.nll_min - level

        below = y < level
        crossings = []
        for i in range(len(x) - 1):
            if below[i] != below[i + 1]:
                try:
                    crossings.append(_brent(excess, x[i], x[i + 1], 1e-5 * (x[-1] - x[0])))
                except ValueError:  # the refined profile does not change sign: interpolate
                    crossings.append(float(x[i] + (level - y[i]) * (x[i + 1] - x[i]) / (y[i + 1] - y[i])))
        lo = float(x[0]) if below[0] else (crossings[0] if crossings else math.nan)
        hi = float(x[-1]) if below[-1] else (crossings[-1] if crossings else math.nan)
        runs = int(below[0]) + sum(1 for i in range(len(x) - 1) if not below[i] and below[i + 1])
        out.append(Interval(float(cl), lo, hi, bool(below[0]), bool(below[-1]), runs > 1))
    return profile, out


def profile_intervals(
    nll: _Profiled,
    name: str,
    cls: Sequence[float] = (ONE_SIGMA,),
    *,
    grid: Sequence[float] | None = None,
    best: FitResult | None = None,
) -> tuple[ProfileResult | None, list[Interval]]:
    r"""Profile-likelihood intervals of ``name`` at every confidence level in ``cls``.

    Args:
        nll: The likelihood (:class:`~sbilab.stats.UnbinnedLikelihood`).
        name: The parameter.
        cls: Confidence levels, e.g. ``(0.683, 0.95)``.
        grid: Scan points ``(K,)`` inside the parameter's limits: bracket the crossings with the
            profile on this grid (finds disjoint regions). Default: step out from the best fit.
        best: A global fit to reuse (default: :meth:`~sbilab.stats.UnbinnedLikelihood.fit`).

    Returns:
        ``(profile, intervals)``: the grid profile (``None`` when stepping out) and one
        :class:`Interval` per level, in the order of ``cls``.

    Raises:
        FitError: unknown ``name``, or (stepping out) the global fit did not converge (an
            optimum at a bound is fine: that end of the interval is the bound).
        OutOfSupportError: grid points outside the parameter's limits.

    Example:
        >>> import torch
        >>> from sbilab import Events, ParameterSpace
        >>> from sbilab.stats import UnbinnedLikelihood
        >>> x = torch.linspace(-1.0, 1.0, 101, dtype=torch.float64).reshape(-1, 1) + 0.2  # mean 0.2
        >>> space = ParameterSpace(("mu",), low=(-2.0,), high=(2.0,))
        >>> nll = UnbinnedLikelihood(lambda x, t: t[:, 0] * x[:, 0] - t[:, 0] ** 2 / 2, Events.observed(x), space)
        >>> _, (iv,) = profile_intervals(nll, "mu")  # N(mu, 1): 0.2 -+ 1/sqrt(101)
        >>> round(iv.lo, 5), round(iv.hi, 5)
        (0.1005, 0.2995)
    """
    nll.model.index(name)
    best = best if best is not None else nll.fit()
    if grid is not None:
        return _grid(nll, name, nll._check_scan(name, grid), list(cls), best)
    if not (best.converged and math.isfinite(best.nll_min)):
        raise FitError(f"the global fit did not converge ({best.message}); cannot build an interval for {name!r}.")
    return None, [_stepping(nll, name, float(cl), best) for cl in cls]


def warn_one_sided(interval: Interval, name: str) -> None:
    """Warn with :class:`~sbilab.exceptions.OneSidedIntervalWarning` when an end of ``interval`` is a bound of the range."""
    sides = [side for side, flag in (("lower", interval.lo_at_bound), ("upper", interval.hi_at_bound)) if flag]
    if sides:
        warnings.warn(
            f"the {interval.cl:.3g} CL interval of {name!r}, [{interval.lo:.6g}, {interval.hi:.6g}], runs into the "
            f"{' and '.join(sides)} bound of its range: it is one-sided there (that end is the bound, not a crossing). "
            "Quote it as a limit, or widen the range if the estimator was trained beyond it.",
            OneSidedIntervalWarning, stacklevel=3)
