r"""Intervals from profile likelihoods.

:func:`scan_intervals` profiles :math:`-2\Delta\log L` on a grid spanning the whole allowed
range and returns, per confidence level, the outermost crossings of the :math:`\chi^2_1`
threshold, each refined by root finding between the bracketing grid points (so disjoint
allowed regions, common for quadratic EFT likelihoods, are not missed: the reported interval
is their hull, and ``disjoint`` says so; regions narrower than the grid step can be missed,
except the one around the best fit, which is always a scan point). Their asymptotic expectations
are :func:`sbilab.stats.cramer_rao` (with ``constraints=`` and ``fixed=``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..stats import FitResult, ProfileResult, UnbinnedLikelihood

__all__ = ["Interval", "scan_intervals"]


@dataclass(frozen=True)
class Interval:
    """A profile-likelihood interval: ``lo``, ``hi`` (a bound of the range if the threshold is not crossed)."""

    cl: float
    lo: float
    hi: float
    lo_at_bound: bool
    hi_at_bound: bool
    disjoint: bool

    def to_dict(self) -> dict:
        return {"cl": self.cl, "lo": self.lo, "hi": self.hi, "lo_at_bound": self.lo_at_bound,
                "hi_at_bound": self.hi_at_bound, "disjoint": self.disjoint}


def scan_intervals(nll: UnbinnedLikelihood, name: str, grid: Sequence[float], cls: Sequence[float], *,
                   best: FitResult) -> tuple[ProfileResult, list[Interval]]:
    r"""Profile ``name`` on ``grid (K,)`` (other free parameters re-minimised) and read off intervals.

    If the profile dips below the global minimum (a minimiser stuck in a flat valley), the global
    fit is redone from the lowest profile point and the scan repeated.

    Returns:
        The profile and one :class:`Interval` per confidence level in ``cls``.
    """
    from scipy.optimize import brentq
    from scipy.stats import chi2

    base = np.asarray(grid, dtype=np.float64)
    for _ in range(3):  # a profile point below the global minimum means the minimiser missed it: refit from there
        centre = best.best[name]
        grid = base
        if base[0] <= centre <= base[-1] and not np.isclose(base, centre, rtol=0, atol=1e-9 * (base[-1] - base[0])).any():
            grid = np.sort(np.append(base, centre))  # the minimum is always a scan point: intervals narrower than the grid step
        profile = nll.profile(name, grid, best=best)
        deltas = np.asarray(profile.delta_nll)
        if not np.nanmin(deltas) < -1e-3:
            break
        better = nll.fit(start=best.best, fixed={name: float(grid[int(np.nanargmin(deltas))])})
        best = nll.fit(start=better.best)
    x = np.asarray(profile.values)
    y = np.minimum(np.asarray(profile.delta_nll), 1e6)
    y = np.where(np.isfinite(y), y, 1e6)
    out = []
    for cl in cls:
        level = float(chi2.ppf(cl, 1))

        def excess(v: float) -> float:
            return nll.fit(start=best.best, fixed={name: v}).nll_min - best.nll_min - level

        below = y < level
        crossings = []
        for i in range(len(x) - 1):
            if below[i] != below[i + 1]:
                try:
                    crossings.append(float(brentq(excess, x[i], x[i + 1], xtol=1e-5 * (x[-1] - x[0]))))
                except ValueError:  # the refined profile does not change sign: interpolate
                    crossings.append(float(x[i] + (level - y[i]) * (x[i + 1] - x[i]) / (y[i + 1] - y[i])))
        lo = float(x[0]) if below[0] else (crossings[0] if crossings else math.nan)
        hi = float(x[-1]) if below[-1] else (crossings[-1] if crossings else math.nan)
        runs = int(below[0]) + sum(1 for i in range(len(x) - 1) if not below[i] and below[i + 1])
        out.append(Interval(float(cl), lo, hi, bool(below[0]), bool(below[-1]), runs > 1))
    return profile, out
