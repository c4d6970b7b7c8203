import math

import pytest
import torch

from sbilab import Events
from sbilab.exceptions import MissingAugmentedDataError
from sbilab.simulators import GaussianLatent, augment, joint_log_ratio, joint_score, ratio_training_data


def normal_logpdf(x, mu, s):
    return -0.5 * ((x - mu) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)


def test_joint_quantities_match_hand_formulas():
    sim = GaussianLatent(sigma_z=2.0, sigma_x=1.0)
    torch.set_default_dtype(torch.float64)
    try:
        ev = sim.simulate(500, generator=torch.Generator().manual_seed(0))
        z, x, th = ev.latent[:, 0], ev.x[:, 0], ev.theta[:, 0]
        # joint score uses the latent z, not x
        torch.testing.assert_close(joint_score(sim, ev)[:, 0], (z - th) / 4.0)
        assert not torch.allclose(joint_score(sim, ev)[:, 0], (x - th) / 4.0)
        # joint log-ratio against theta1 = 0.5: only the z-term depends on theta
        expected = normal_logpdf(z, th, 2.0) - normal_logpdf(z, 0.5, 2.0)
        torch.testing.assert_close(joint_log_ratio(sim, ev, ev.theta, torch.tensor([0.5])), expected)
        aug = augment(sim, ev)
        torch.testing.assert_close(aug.log_r_joint, normal_logpdf(z, th, 2.0) - normal_logpdf(z, 0.0, 2.0))
    finally:
        torch.set_default_dtype(torch.float32)


def test_joint_score_is_unbiased_for_the_marginal_score():
    # E[t(x,z|θ) | x] = t(x|θ) = (x - θ)/5: check by regressing t_joint on x (it is linear in x).
    sim = GaussianLatent(sigma_z=2.0, sigma_x=1.0)
    ev = sim.simulate(200_000, theta=torch.tensor([0.7]), generator=torch.Generator().manual_seed(1))
    t = joint_score(sim, ev)[:, 0].double()
    x = ev.x[:, 0].double()
    slope = ((x - x.mean()) * (t - t.mean())).sum() / ((x - x.mean()) ** 2).sum()
    intercept = t.mean() - slope * x.mean()
    assert abs(slope.item() - 0.2) < 0.004
    assert abs(intercept.item() + 0.7 * 0.2) < 0.004


def test_ratio_training_data_layout():
    sim = GaussianLatent()
    ev = ratio_training_data(sim, 1000, generator=torch.Generator().manual_seed(4))
    assert len(ev) == 2000 and float(ev.label.sum()) == 1000
    ref = ev[ev.label == 0]
    # reference events were drawn at θ_ref = 0: latent mean 0 whatever their θ field says
    assert abs(ref.latent.mean().item()) < 0.2 and ref.theta.std().item() > 0.5
    num = ev[ev.label == 1]
    torch.testing.assert_close((num.latent - num.theta).mean(), torch.tensor(0.0), atol=0.2, rtol=0)
    # augmented fields consistent with the joint density at each event's θ
    expected = normal_logpdf(ev.latent[:, 0], ev.theta[:, 0], 2.0) - normal_logpdf(ev.latent[:, 0], 0.0, 2.0)
    torch.testing.assert_close(ev.log_r_joint, expected, rtol=1e-5, atol=1e-5)


def test_reproducible_with_generator():
    sim = GaussianLatent()
    a = ratio_training_data(sim, 50, generator=torch.Generator().manual_seed(9))
    b = ratio_training_data(sim, 50, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(a.x, b.x)


def test_simulator_without_joint_likelihood_is_refused():
    class Opaque:
        space = GaussianLatent().space

    ev = Events(x=torch.zeros(2, 1), theta=torch.zeros(2, 1))
    with pytest.raises(MissingAugmentedDataError, match="CARL/NDE"):
        joint_score(Opaque(), ev)
