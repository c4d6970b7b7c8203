"""MCMC and importance sampling on exact likelihoods against analytic (truncated Gaussian) posteriors; sbi adapter."""

import math

import pytest
import torch
from scipy import stats as sps

from sbilab.exceptions import ConfigError, InvalidEventsError, SamplingError, ShapeMismatchError
from sbilab.inference import LogPosterior, SbiPosterior, sample_importance, sample_mcmc, sample_posterior, simulate_for_sbilab
from sbilab.simulators import GaussianLatent

SIM = GaussianLatent(sigma_z=2.0, sigma_x=1.0, low=-2.0, high=2.0)
SIGMA = math.sqrt(5.0)


def observed(n: int, theta: float, seed: int = 0) -> torch.Tensor:
    return SIM.simulate(n, theta=torch.tensor([theta]), generator=torch.Generator().manual_seed(seed)).x


def exact_likelihood(x):
    return lambda theta: SIM.log_prob(x.repeat(theta.shape[0], 1), theta.repeat_interleave(x.shape[0], 0)).reshape(theta.shape[0], -1).sum(1)


def truncated(x):
    """Uniform prior on [-2, 2] times N(x̄; θ, σ²/n): a normal truncated to the box."""
    n, mean = x.shape[0], x.mean().item()
    sd = SIGMA / math.sqrt(n)
    return sps.truncnorm((-2 - mean) / sd, (2 - mean) / sd, loc=mean, scale=sd)


@pytest.mark.parametrize("n_events, theta", [(20, 1.5), (200, -0.5)])
def test_mcmc_and_importance_match_truncated_gaussian(n_events, theta):
    x = observed(n_events, theta)
    exact = truncated(x)
    post = LogPosterior(exact_likelihood(x), SIM.space)
    mc = sample_mcmc(post, 4000, chains=32, warmup=200, generator=torch.Generator().manual_seed(1), progress=False)
    assert mc.samples.shape == (4000, 1) and bool(SIM.space.contains(mc.samples).all())
    assert mc.samples.mean().item() == pytest.approx(exact.mean(), abs=0.05 * exact.std() + 0.02)
    assert mc.samples.std().item() == pytest.approx(exact.std(), rel=0.08)
    assert float(mc.rhat.max()) < 1.05 and 0.15 < mc.acceptance < 0.6
    imp = sample_importance(post, 2000, generator=torch.Generator().manual_seed(2))
    assert imp.samples.mean().item() == pytest.approx(exact.mean(), abs=0.05 * exact.std() + 0.02)
    assert imp.samples.std().item() == pytest.approx(exact.std(), rel=0.08)


class _ExactRatio(torch.nn.Module):
    """The exact log-ratio of the Gaussian toy posing as a trained RatioEstimator."""

    space, x_features = SIM.space, 1

    def forward(self, x, theta):
        return SIM.log_prob(x, theta) - SIM.log_prob(x, SIM.space.reference.to(x.dtype).expand(x.shape[0], 1))


def test_sample_posterior_from_ratio_estimator_and_errors():
    x = observed(100, 0.7, seed=4)
    exact = truncated(x)
    for method in ("mcmc", "importance"):
        opts = {"progress": False, "chains": 16, "warmup": 150} if method == "mcmc" else {}
        res = sample_posterior(_ExactRatio(), x, 2000, method=method, generator=torch.Generator().manual_seed(5), **opts)
        assert res.samples.mean().item() == pytest.approx(exact.mean(), abs=0.06)
    with pytest.raises(ShapeMismatchError):
        sample_posterior(_ExactRatio(), torch.zeros(5, 2), 10)
    with pytest.raises(InvalidEventsError):
        sample_posterior(_ExactRatio(), torch.tensor([[float("nan")]]), 10)
    with pytest.raises(ConfigError, match=r"Unknown sampler 'hmc'; choose one of \['importance', 'mcmc'\]"):
        sample_posterior(_ExactRatio(), x, 10, method="hmc")
    post = LogPosterior.from_estimator(_ExactRatio(), x)
    with pytest.raises(SamplingError):  # the time bound turns a long run into a clear error
        sample_mcmc(post, 10**5, chains=4, max_steps=10**6, max_seconds=0.2, progress=False)
    with pytest.raises(SamplingError):
        sample_mcmc(post, 10, init=torch.tensor([[3.0], [0.0]]), progress=False)  # a start outside the prior support
    with pytest.raises(SamplingError):  # a likelihood far narrower than the prior leaves too few effective draws
        sample_importance(LogPosterior(lambda t: -0.5 * (t[:, 0] / 1e-4) ** 2, SIM.space), 100, proposals=200)


@pytest.mark.filterwarnings("ignore:Number of")
def test_sbi_prior_simulator_and_diagnostics():
    from sbi.diagnostics import run_sbc
    from sbi.utils import BoxUniform

    from sbilab.estimators.posterior import PosteriorEstimator

    prior = BoxUniform(torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0]))
    events, space = simulate_for_sbilab(lambda t: t + 0.1 * torch.randn_like(t), prior, 300, generator=torch.Generator().manual_seed(0))
    assert events.x.shape == (300, 2) and space.low.tolist() == [-1.0, -1.0]
    est = PosteriorEstimator.from_events(events, space, transforms=1, hidden=(8,))
    wrapped = SbiPosterior(est, prior=prior, generator=torch.Generator().manual_seed(1))
    ranks, dap = run_sbc(events.theta[:20], events.x[:20], wrapped, num_posterior_samples=50, show_progress_bar=False)
    assert ranks.shape == (20, 2) and bool((ranks >= 0).all() & (ranks <= 50).all())
    lp = wrapped.log_prob(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), x=events.x[:1])
    assert math.isfinite(lp[0].item()) and lp[1].item() == -math.inf
    # a likelihood-based posterior through the same interface
    lik = SbiPosterior(lambda xo: LogPosterior(exact_likelihood(xo), SIM.space),
                       sampler=lambda lp_, n: sample_importance(lp_, n, generator=torch.Generator().manual_seed(0)))
    xo = observed(50, 0.0)
    assert lik.sample((500,), x=xo).mean().item() == pytest.approx(truncated(xo).mean(), abs=0.1)


def test_log_posterior_of_padded_sets_passes_the_mask():
    """Sets of N(theta, 1) particles with NaN padding: log L(theta) = sum over real entries of theta x - theta^2/2."""

    class SetRatio(torch.nn.Module):
        space, x_features = SIM.space, 1

        def __init__(self):
            super().__init__()
            self.register_buffer("one", torch.tensor(1.0, dtype=torch.float64))

        def forward(self, x, theta, mask):
            xm = torch.where(mask, x[..., 0], torch.zeros((), dtype=x.dtype))
            return self.one * (mask * (theta[:, :1] * xm - 0.5 * theta[:, :1] ** 2)).sum(1)

    g = torch.Generator().manual_seed(0)
    mask = torch.arange(5) < torch.randint(1, 6, (30,), generator=g)[:, None]
    x = (0.4 + torch.randn(30, 5, 1, generator=g, dtype=torch.float64)).masked_fill(~mask[..., None], math.nan)
    post = LogPosterior.from_estimator(SetRatio(), x, mask=mask)
    theta = torch.tensor([[-0.5], [0.0], [0.8]], dtype=torch.float64)
    real = x[..., 0][mask]
    expected = theta[:, 0] * real.sum() - 0.5 * theta[:, 0] ** 2 * len(real)
    torch.testing.assert_close(post.log_likelihood(theta), expected)
