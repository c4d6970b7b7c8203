"""check_agreement: unbiasedness of per-event integrals from raw differences, not from pulls.

Synthetic importance-sampling runs with known answers: log-normal weights (a long upper tail,
as from a proposal narrower than the integrand's tail) of mean exactly the integral, and the
same scaled by 0.97 (a proposal missing 3 % of the integrand, e.g. part of one permutation).
"""

import math

import torch

from sbilab.mem import Integral, check_agreement
from sbilab.mem.integrate import estimate

EVENTS, SAMPLES, SIGMA = 2000, 256, 1.5


def _run(scale: float, seed: int, sigma: float = SIGMA) -> Integral:
    g = torch.Generator().manual_seed(seed)
    log_i = 6 * torch.rand(EVENTS, 1, 1, generator=g, dtype=torch.float64) - 3  # the true integrals, spread over e^±3
    log_w = log_i + math.log(scale) - sigma**2 / 2 + sigma * torch.randn(EVENTS, 1, SAMPLES, generator=g, dtype=torch.float64)
    return Integral(*estimate(log_w), samples=SAMPLES), log_i.reshape(-1)


def _exact(log_i: torch.Tensor) -> Integral:
    zero = torch.zeros_like(log_i)
    return Integral(log_i, zero, zero, samples=1)


def test_an_unbiased_heavy_tailed_estimator_passes_though_its_pulls_are_low():
    own, log_i = _run(1.0, seed=1)
    check = check_agreement(own, _exact(log_i))
    assert check.passed and abs(check.t) < 3 and check.events == EVENTS, check
    # what the per-event pulls say: significantly negative (estimate and stated error correlate)
    assert check.mean_pull < -5 * check.sd_pull / math.sqrt(EVENTS), check
    # against a noisy but unbiased reference (light tails) it passes too
    ref = Integral(*estimate(log_i[:, None, None] - 0.05 + 0.1 * torch.randn(EVENTS, 1, 4096, generator=torch.Generator().manual_seed(2),
                                                                             dtype=torch.float64) - 0.005 + 0.05), samples=4096)
    assert check_agreement(own, ref).passed


def test_an_estimator_low_by_three_percent_fails():
    own, log_i = _run(0.97, seed=1)
    check = check_agreement(own, _exact(log_i))
    assert not check.passed and check.t < -3, check
    assert abs(check.mean_difference + 0.03) < 3 * check.standard_error  # it measures the bias itself


def test_events_without_estimate_are_left_out():
    own, log_i = _run(1.0, seed=3)
    lv = own.log_value.clone()
    lv[:5] = -math.inf
    check = check_agreement(Integral(lv, own.rel_error, own.ess, SAMPLES), _exact(log_i))
    assert check.events == EVENTS - 5
