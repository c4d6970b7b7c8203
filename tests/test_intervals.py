"""profile_intervals: stepping out and grid scans against closed-form profiles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from sbilab import Events, ParameterSpace
from sbilab.exceptions import FitError
from sbilab.stats import UnbinnedLikelihood, profile_intervals


def gaussian_nll(x: torch.Tensor, mean_of=lambda t: t[:, 0]) -> UnbinnedLikelihood:
    space = ParameterSpace(("theta",), low=(-2.0,), high=(2.0,), reference=(0.3,))
    return UnbinnedLikelihood(lambda x, t: mean_of(t) * x[:, 0] - 0.5 * mean_of(t) ** 2, Events.observed(x), space)


def test_stepping_and_grid_agree_with_the_closed_form_at_several_levels():
    x = 0.25 + torch.randn(400, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nll = gaussian_nll(x)  # N(theta, 1): -2 Delta log L = n (theta - xbar)^2
    xbar, sigma = float(x.mean()), 1 / math.sqrt(400)
    cls = (0.6827, 0.95)
    profile, stepped = profile_intervals(nll, "theta", cls)
    assert profile is None
    grid_profile, gridded = profile_intervals(nll, "theta", cls, grid=np.linspace(-0.5, 1.0, 16))
    assert len(grid_profile.values) == 17  # the best fit joins the grid
    for cl, a, b in zip(cls, stepped, gridded):
        half = math.sqrt(chi2.ppf(cl, 1)) * sigma
        for iv in (a, b):
            assert iv.cl == cl and not (iv.lo_at_bound or iv.hi_at_bound or iv.disjoint)
            assert iv.lo == pytest.approx(xbar - half, abs=2e-5) and iv.hi == pytest.approx(xbar + half, abs=2e-5)
    assert nll.interval("theta", cl=0.95) == (stepped[1].lo, stepped[1].hi)
    json.dumps(gridded[0].to_dict())


def test_grid_finds_disjoint_regions_and_bounds():
    # x ~ N(theta^2, 1): two minima at +-sqrt(xbar); at 68.3% two separate regions, reported as their hull
    x = 1.0 + torch.randn(100, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    nll = gaussian_nll(x, mean_of=lambda t: t[:, 0] ** 2)
    xbar = float(x.mean())
    _, (iv,) = profile_intervals(nll, "theta", [0.6827], grid=np.linspace(-2.0, 2.0, 81))  # step 0.05: both regions (width ~0.1) are seen
    assert iv.disjoint and iv.hi == pytest.approx(math.sqrt(xbar + math.sqrt(chi2.ppf(0.6827, 1)) / 10), abs=1e-4)
    assert iv.lo == pytest.approx(-iv.hi, abs=1e-4)
    # a grid whose ends stay inside the allowed region: the ends are reported as bounds
    _, (inside,) = profile_intervals(nll, "theta", [0.6827], grid=np.linspace(1.02, 1.08, 4))
    assert inside.lo_at_bound and inside.hi_at_bound and (inside.lo, inside.hi) == (1.02, 1.08)
    with pytest.raises(FitError, match="unknown parameter 'mass'"):
        profile_intervals(nll, "mass")


def test_interval_of_an_optimum_at_a_bound_is_one_sided_and_takes_few_fits():
    """The old code stepped by HESSE's 4e-8 error at the bound and took 5+ minutes; now a bounded number of fits."""
    from sbilab.exceptions import OneSidedIntervalWarning

    x = 4.0 + torch.randn(100, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)  # N(theta, 1), mean ~ 4 > bound 2
    nll = gaussian_nll(x)
    calls = []
    fit = nll.fit
    nll.fit = lambda *a, **k: calls.append(1) or fit(*a, **k)
    best = nll.fit()
    assert not best.valid and best.at_bound == ("theta",)
    with pytest.warns(OneSidedIntervalWarning, match=r"runs into the upper bound of its range: it is one-sided"):
        lo, hi = nll.interval("theta", best=best)
    # -2 Delta log L = n [(theta - xbar)^2 - (2 - xbar)^2] crosses 1 at xbar - sqrt((2 - xbar)^2 + 1/n)
    xbar, n = float(x.mean()), 100
    assert lo == pytest.approx(xbar - math.sqrt((2 - xbar) ** 2 + 1 / n), abs=1e-6) and hi == 2.0
    assert len(calls) < 40
    _, (iv,) = profile_intervals(nll, "theta", [0.95], best=best)
    assert iv.hi_at_bound and not iv.lo_at_bound and iv.hi == 2.0
    assert iv.lo == pytest.approx(xbar - math.sqrt((2 - xbar) ** 2 + chi2.ppf(0.95, 1) / n), abs=1e-6)
