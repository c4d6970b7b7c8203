"""Neyman construction on the Gaussian toy: exact and deliberately wrong test statistics."""

from __future__ import annotations

import math

import pytest
import torch

from sbilab.exceptions import FitError, ShapeMismatchError
from sbilab.simulators.toys import GaussianLatent
from sbilab.stats.neyman import NeymanConstruction

SIM = GaussianLatent()  # x ~ N(theta, 5)
N_EVENTS = 50
GRID = torch.linspace(-1.0, 1.0, 21, dtype=torch.float64)
TRUE_INDEX = 13  # theta = 0.3
CL = 0.6826894921370859


def simulate_toys(theta, n_toys, generator):
    return theta[0] + math.sqrt(5.0) * torch.randn(n_toys, N_EVENTS, 1, generator=generator, dtype=torch.float64)


def exact_statistic(x, theta):  # -2 log lambda of the exact likelihood: N (xbar - theta)^2 / 5
    return x.shape[1] * (x.mean(dim=(1, 2)) - theta[0]) ** 2 / 5.0


def wrong_statistic(x, theta):  # a mis-calibrated "learned" ratio: log r scaled by 2, shifted by 0.3
    return 2.0 * exact_statistic(x, theta) + 0.3


@pytest.fixture(scope="module")
def observed():
    return simulate_toys(GRID[TRUE_INDEX : TRUE_INDEX + 1], 300, torch.Generator().manual_seed(11))


def _coverage(neyman, observed, method="grid"):
    return float(neyman.confidence_set(observed, CL, method=method)[:, TRUE_INDEX].double().mean())


def test_exact_statistic_critical_values_and_coverage(observed):
    neyman = NeymanConstruction(exact_statistic, simulate_toys, GRID).calibrate(2000, generator=torch.Generator().manual_seed(1), progress=False)
    k = neyman.critical_values(CL)
    assert k.shape == (21,)
    assert float(k.mean()) == pytest.approx(1.0, abs=0.05)  # chi2_1 quantile
    assert float(neyman.critical_values(0.95).mean()) == pytest.approx(3.841, abs=0.15)
    assert _coverage(neyman, observed) == pytest.approx(CL, abs=0.07)
    # a single dataset gives one accepted interval around its mean
    accepted = neyman.confidence_set(observed[0], CL)
    xbar, half = float(observed[0].mean()), math.sqrt(5 / N_EVENTS)
    inside = (GRID - xbar).abs() < half * float(k.mean()) ** 0.5
    assert (accepted == inside).double().mean() > 0.9


def test_wrong_statistic_neyman_covers_asymptotic_does_not(observed):
    neyman = NeymanConstruction(wrong_statistic, simulate_toys, GRID).calibrate(2000, generator=torch.Generator().manual_seed(2), progress=False)
    assert _coverage(neyman, observed) == pytest.approx(CL, abs=0.07)
    assert _coverage(neyman, observed, method="regression") == pytest.approx(CL, abs=0.07)
    # the asymptotic rule tau <= chi2_1(0.683) = 1 covers P(chi2_1 <= 0.35) ~ 0.45 only
    asymptotic = float((neyman.observed_statistics(observed)[:, TRUE_INDEX] <= 1.0).double().mean())
    assert asymptotic < 0.55
    # the quantile regression recovers k(theta) = 2 * 1 + 0.3 everywhere
    k = neyman.fit_quantile_regression(CL)(GRID.reshape(-1, 1))
    assert float((k - 2.3).abs().max()) < 0.2


def test_bad_input():
    with pytest.raises(ShapeMismatchError):
        NeymanConstruction(exact_statistic, simulate_toys, torch.zeros(0, 1))
    neyman = NeymanConstruction(exact_statistic, simulate_toys, GRID)
    with pytest.raises(FitError, match="calibrate"):
        neyman.critical_values(CL)
    with pytest.raises(FitError, match="n_toys"):
        neyman.calibrate(3)


def test_set_valued_toys_reach_the_statistic_with_their_masks():
    """Toys of padded particle sets (NaN padding): the exact statistic n_real (mean_real - theta)^2 is
    chi^2_1 distributed, so the 68.3% critical value is 1 and the sets cover."""

    def set_toys(theta, n_toys, generator):
        counts = 1 + torch.randint(0, 4, (n_toys, 20), generator=generator)
        mask = torch.arange(4) < counts[..., None]
        x = theta[0] + torch.randn(n_toys, 20, 4, 1, generator=generator, dtype=torch.float64)
        return x.masked_fill(~mask[..., None], math.nan), mask

    def set_statistic(x, theta, mask):
        n_real = mask.sum((1, 2))
        mean = torch.where(mask, x[..., 0], torch.zeros((), dtype=x.dtype)).sum((1, 2)) / n_real
        return n_real * (mean - theta[0]) ** 2

    grid = torch.linspace(-0.5, 0.5, 5, dtype=torch.float64)
    neyman = NeymanConstruction(set_statistic, set_toys, grid).calibrate(2000, generator=torch.Generator().manual_seed(0), progress=False)
    torch.testing.assert_close(neyman.critical_values(CL), torch.ones(5, dtype=torch.float64), atol=0.12, rtol=0)
    x, mask = set_toys(grid[2:3], 400, torch.Generator().manual_seed(1))
    covered = neyman.confidence_set(x, CL, mask=mask)[:, 2].double().mean()
    assert abs(float(covered) - CL) < 3 * math.sqrt(CL * (1 - CL) / 400) + 0.03
    single = neyman.observed_statistics(x[0], mask=mask[0])
    torch.testing.assert_close(single, neyman.observed_statistics(x[:1], mask=mask[:1])[0])
