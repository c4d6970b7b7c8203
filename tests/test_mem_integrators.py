"""Common random numbers, one-dimensional maps, multi-channel sampling and the adaptive grid."""

import math

import pytest
import torch
from scipy.stats import cauchy, truncnorm

from sbilab.exceptions import IntegrandError
from sbilab.mem import (BoxProposal, CommonNoise, GaussianTransfer, HardProcess, MatrixElement, MultiChannel, adapt_vegas,
                        calls_for_precision, cauchy_map, event_keys, integrate, truncated_normal_map)
from sbilab.mem.mappings import truncated_normal_log_prob
from sbilab.mem.toys.resonance import PeakChannel

WIDTH = 0.03


class Peak(HardProcess):
    """A narrow 4-D Gaussian in the unit box at (mu, 0.3, 0.6, 0.5); the first variable is observed."""

    parameter_names = ("mu",)
    slot_sizes = (1,)
    bounds = torch.tensor([[0.0, 1.0]] * 4, dtype=torch.float64)

    def dsigma(self, z, alpha):
        centre = torch.stack([alpha[..., 0], *(torch.full_like(alpha[..., 0], v) for v in (0.3, 0.6, 0.5))], dim=-1)
        return torch.exp(-0.5 * (((z - centre) / WIDTH) ** 2).sum(-1)) / (2 * math.pi * WIDTH**2) ** 2

    def partons(self, z):
        return z[..., :1]


def test_event_keys_depend_on_the_event_only():
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    keys = event_keys(x)
    assert torch.equal(event_keys(x[[4, 1]]), keys[[4, 1]])
    assert len(set(keys.tolist())) == 6
    assert not torch.equal(event_keys(x, seed=1), keys)
    assert torch.equal(event_keys(x.float()), event_keys(x.float().double()))


def test_common_noise_is_deterministic_and_sobol_is_more_accurate():
    x = torch.arange(5, dtype=torch.float64).reshape(-1, 1)
    sobol = CommonNoise(dim=1, samples=2048, sequence="sobol", replicas=8)
    u = sobol(x)
    assert u.shape == (5, 8, 256, 1) and torch.equal(u, sobol(x)) and bool(((u > 0) & (u < 1)).all())
    assert torch.equal(sobol(x[2:3]), u[2:3])
    f = lambda v: torch.sin(math.pi * v) ** 2  # noqa: E731 - smooth and periodic, integral 1/2
    err_sobol = float(f(u).mean(2).sub(0.5).abs().max())
    err_random = float(f(CommonNoise(dim=1, samples=256)(x)).mean(2).sub(0.5).abs().mean())
    assert err_sobol < 1e-4 < 1e-3 < err_random


def test_maps_match_scipy():
    u = torch.rand(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v, log_q = cauchy_map(u, torch.tensor(100.0, dtype=torch.float64), torch.tensor(2.5, dtype=torch.float64), 90.0, 120.0)
    norm = cauchy.cdf(120, 100, 2.5) - cauchy.cdf(90, 100, 2.5)
    assert torch.allclose(log_q, torch.tensor(cauchy.logpdf(v.numpy(), 100, 2.5) - math.log(norm)), atol=1e-12)
    for mean, lo, hi in ((0.0, -1.0, 2.0), (0.0, 6.0, 9.0), (0.0, -40.0, -39.0)):
        args = (torch.tensor(mean, dtype=torch.float64), 1.0, torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64))
        v, log_q = truncated_normal_map(u, *args)
        assert bool(((v >= lo) & (v <= hi)).all())
        assert torch.allclose(log_q, truncated_normal_log_prob(v, *args), atol=1e-12)
        if max(lo, -hi) < 30:  # within double precision of the mean (further out the map is uniform by design)
            assert torch.allclose(log_q, torch.tensor(truncnorm.logpdf(v.numpy(), lo - mean, hi - mean, loc=mean)), atol=1e-9)


def test_multichannel_is_unbiased_and_stratified():
    channels = [PeakChannel(100.0, 5.0, (60.0, 140.0)), PeakChannel(120.0, 2.0, (60.0, 140.0)), BoxProposal(torch.tensor([[60.0, 140.0]]))]
    mix = MultiChannel(channels, [0.45, 0.45, 0.1])
    u = CommonNoise(1, 40_000)(torch.zeros(1, 1)).reshape(1, -1, 1)
    z, log_q = mix.transform(u, None)
    assert torch.allclose(log_q, mix._mixture(z, None, [18_000 / 40_000, 18_000 / 40_000, 4_000 / 40_000]))
    # g = a Cauchy(110, 3) on [60, 140]: exact integral known
    g = 3.0 / (math.pi * (9.0 + (z[..., 0] - 110.0) ** 2))
    w = g / log_q.exp()
    exact = (math.atan(30 / 3) + math.atan(50 / 3)) / math.pi
    assert abs(float(w.mean()) - exact) < 4 * float(w.std()) / math.sqrt(w.numel())


def test_vegas_adapts_to_a_narrow_peak():
    model = MatrixElement(Peak(), GaussianTransfer(absolute=0.05))
    x = torch.tensor([[0.45], [0.55], [0.5]], dtype=torch.float64)
    theta = torch.tensor([0.5], dtype=torch.float64)
    exact = torch.exp(-0.5 * ((x[:, 0] - 0.5) ** 2) / (WIDTH**2 + 0.05**2)) / math.sqrt(2 * math.pi * (WIDTH**2 + 0.05**2))
    grid, calls = adapt_vegas(model, x, theta, bins=32, iterations=6, samples=4096, generator=torch.Generator().manual_seed(0))
    res = integrate(model, x, theta, grid, samples=8192, extra_calls=calls)
    plain = integrate(model, x, theta, BoxProposal(model.bounds), samples=8192)
    assert bool(((res.log_value.exp() / exact - 1).abs() < 4 * res.rel_error).all())
    assert bool((plain.rel_error > 5 * res.rel_error).all())
    assert bool((calls_for_precision(res) < calls_for_precision(plain) / 5).all())
    u = torch.rand(3, 64, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    z, log_q = grid.transform(u, x)
    assert torch.allclose(grid.log_prob(z, x), log_q, atol=1e-9)
    with pytest.raises(IntegrandError, match="no grid"):
        grid.transform(u[:1], torch.tensor([[0.123]], dtype=torch.float64))
