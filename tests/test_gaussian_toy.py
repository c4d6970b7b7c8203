"""Gaussian latent toy: joint score on the latent, exact likelihood, and E[t_joint | x] = t(x)."""

import numpy as np
import pytest
import torch
from scipy import stats

from sbilab.simulators import GaussianLatent, joint_score


def test_joint_score_uses_latent_not_observable():
    sim = GaussianLatent(sigma_z=2.0, sigma_x=1.0)
    ev = sim.simulate(500, theta=torch.tensor([0.5]), generator=torch.Generator().manual_seed(0))
    ev = ev.replace(x=ev.x.double(), theta=ev.theta.double(), latent=ev.latent.double())
    t = joint_score(sim, ev)[:, 0]
    torch.testing.assert_close(t, (ev.latent[:, 0] - 0.5) / 4.0, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(t, (ev.x[:, 0] - 0.5) / 4.0, atol=1e-3)


def test_log_prob_against_scipy():
    sim = GaussianLatent(sigma_z=2.0, sigma_x=1.0)
    x = torch.linspace(-6, 6, 25, dtype=torch.float64).reshape(-1, 1)
    theta = torch.full((25, 1), -0.7, dtype=torch.float64)
    exact = stats.norm(loc=-0.7, scale=np.sqrt(5.0)).logpdf(x[:, 0].numpy())
    np.testing.assert_allclose(sim.log_prob(x, theta).numpy(), exact, rtol=1e-12)
    np.testing.assert_allclose(sim.score(x, theta)[:, 0].numpy(), (x[:, 0].numpy() + 0.7) / 5.0, rtol=1e-12)


def test_mean_joint_score_in_x_bins_is_exact_score():
    sim = GaussianLatent(sigma_z=2.0, sigma_x=1.0)
    theta0 = 0.3
    ev = sim.simulate(200_000, theta=torch.tensor([theta0]), generator=torch.Generator().manual_seed(1))
    ev = ev.replace(x=ev.x.double(), theta=ev.theta.double(), latent=ev.latent.double())
    t = joint_score(sim, ev)[:, 0].numpy()
    x = ev.x[:, 0].numpy()
    edges = np.linspace(-3.0, 3.6, 12)
    idx = np.digitize(x, edges)
    for b in range(1, len(edges)):
        sel = idx == b
        centre_mean_x = x[sel].mean()
        exact = (centre_mean_x - theta0) / 5.0  # exact score is linear in x, so its bin mean is at mean x
        err = t[sel].std() / np.sqrt(sel.sum())
        assert t[sel].mean() == pytest.approx(exact, abs=5 * err + 1e-3)
