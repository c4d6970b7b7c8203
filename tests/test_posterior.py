"""PosteriorEstimator: bounded flow maths, training with fit() against a closed-form posterior, bad input."""

import math

import pytest
import torch
from scipy import stats as sps

from sbilab.nets.ensemble import Ensemble
from sbilab.estimators.losses import npe_loss
from sbilab.estimators.posterior import FLOWS, PosteriorEstimator
from sbilab.events import Events
from sbilab.exceptions import ConfigError, InvalidEventsError, OutOfSupportError, ShapeMismatchError
from sbilab.simulators import ParameterSpace
from sbilab.training import fit

SPACE = ParameterSpace(("a", "b"), low=(-3.0, 0.0), high=(3.0, 2.0))
SIGMA = 0.4


def gaussian_data(n: int, seed: int) -> Events:
    """θ ~ U(box); x = θ + N(0, σ²) in both coordinates: posterior = product of truncated normals."""
    g = torch.Generator().manual_seed(seed)
    theta = SPACE.sample(n, generator=g)
    return Events(x=theta + SIGMA * torch.randn(n, 2, generator=g), theta=theta)


@pytest.fixture(scope="module")
def trained() -> PosteriorEstimator:
    data = gaussian_data(6000, 0)
    torch.manual_seed(0)  # network initialisation
    est = PosteriorEstimator.from_events(data, SPACE, transforms=3, hidden=(48, 48))
    res = fit(est, npe_loss, data, epochs=40, batch_size=256, learning_rate=3e-3, patience=None, seed=0, progress=False)
    return res.model


@pytest.mark.parametrize("flow", FLOWS)
def test_density_normalised_and_samples_inside(flow):
    space = ParameterSpace(("a", "b"), low=(0.0, -1.0), high=(1.0, 3.0))
    torch.manual_seed(0)  # unseeded, ~0.7 % of random realnvp initialisations put > 3 % of the mass between grid and box edge
    est = PosteriorEstimator(space, 3, flow=flow, transforms=2, hidden=(16,))
    x = torch.randn(1, 3)
    a, b = torch.linspace(0, 1, 401)[1:-1], torch.linspace(-1, 3, 401)[1:-1]
    grid = torch.stack(torch.meshgrid(a, b, indexing="ij"), -1).reshape(-1, 1, 2)
    density = est.log_prob(grid, x).exp().reshape(399, 399)
    mass = torch.trapezoid(torch.trapezoid(density, b, dim=1), a).item()
    assert mass == pytest.approx(1.0, abs=0.03)
    s = est.sample(2000, torch.randn(3, 3), generator=torch.Generator().manual_seed(0))
    assert s.shape == (2000, 3, 2) and bool(space.contains(s.reshape(-1, 2)).all())


def test_trained_matches_truncated_normal(trained):
    x = torch.tensor([[0.3, 1.0], [-2.8, 0.1], [2.0, 1.9]])
    s = trained.sample(4000, x, generator=torch.Generator().manual_seed(1))
    for j, (lo, hi) in enumerate([(-3.0, 3.0), (0.0, 2.0)]):
        for i in range(3):
            exact = sps.truncnorm((lo - x[i, j].item()) / SIGMA, (hi - x[i, j].item()) / SIGMA, loc=x[i, j].item(), scale=SIGMA)
            assert s[:, i, j].mean().item() == pytest.approx(exact.mean(), abs=0.1)
            assert s[:, i, j].std().item() == pytest.approx(exact.std(), rel=0.2)
    # log density of the flow agrees with the exact posterior density at its mode region
    theta = torch.tensor([[0.3, 1.0]])
    exact_lp = sum(
        sps.truncnorm.logpdf(theta[0, j].item(), (lo - x[0, j].item()) / SIGMA, (hi - x[0, j].item()) / SIGMA, loc=x[0, j].item(), scale=SIGMA)
        for j, (lo, hi) in enumerate([(-3.0, 3.0), (0.0, 2.0)])
    )
    assert trained.log_prob(theta, x[:1]).item() == pytest.approx(exact_lp, abs=0.25)


def test_set_observations_with_padding():
    est = PosteriorEstimator(SPACE, 1, sets=True, transforms=2, hidden=(16,), embedding={"kind": "deepsets", "out_features": 8,
                                                                                         "hidden": [16], "latent": 16})
    x = torch.randn(2, 5, 1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    theta = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    lp = est.log_prob(theta, x, mask=mask)
    padded = x.clone()
    padded[0, 3:] = float("nan")  # all-NaN rows are padding when no mask is given
    assert torch.allclose(est.log_prob(theta, padded), lp)
    assert est.sample(3, x, mask=mask).shape == (3, 2, 2)
    assert torch.allclose(PosteriorEstimator.from_spec(est.spec()).load_state_dict(est.state_dict()) is not None and lp, lp)


def test_bad_input(trained):
    with pytest.raises(ShapeMismatchError):
        trained.sample(10, torch.zeros(4, 3))
    with pytest.raises(InvalidEventsError):
        trained.sample(10, torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(OutOfSupportError):
        trained.log_prob(torch.tensor([[0.0, 2.5]]), torch.zeros(1, 2))
    with pytest.raises(ConfigError):
        trained.sample(0, torch.zeros(1, 2))
    with pytest.raises(ConfigError):
        PosteriorEstimator(SPACE, 2, flow="nope")


def test_spec_roundtrip_publish_and_ensemble(trained, tmp_path):
    from sbilab.publish import load, save

    clone = PosteriorEstimator.from_spec(trained.spec())
    clone.load_state_dict(trained.state_dict())
    theta, x = torch.tensor([[0.1, 0.9]]), torch.tensor([[0.0, 1.0]])
    assert clone.log_prob(theta, x).item() == pytest.approx(trained.log_prob(theta, x).item(), abs=1e-5)
    loaded = load(save(tmp_path / "post.h5", trained))
    assert loaded.log_prob(theta, x).item() == pytest.approx(trained.log_prob(theta, x).item(), abs=1e-5)
    data = gaussian_data(600, 3)
    res = fit(Ensemble(PosteriorEstimator.from_events(data, SPACE, transforms=1, hidden=(8,)), 2), npe_loss, data, epochs=2,
              batch_size=200, seed=0, progress=False)
    assert res.model(data.theta[:5], data.x[:5]).shape == (2, 5)
    assert math.isfinite(res.history["train_loss"][-1])


def _two_member_mixture() -> "PosteriorMixture":
    """A 1-D mixture whose two members clearly differ (member 1's standardisation shifted by +1.5)."""
    from sbilab.estimators.posterior import PosteriorMixture
    from sbilab.nets.ensemble import Ensemble

    space = ParameterSpace(("a",), low=(0.0,), high=(1.0,))
    ens = Ensemble(PosteriorEstimator(space, 2, transforms=1, hidden=(8,)), 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ens.stacked_buffers()["z_mean"][1] += 1.5
    return PosteriorMixture(ens.eval())


def test_mixture_density_is_the_member_average_and_normalised():
    mix = _two_member_mixture()
    x = torch.tensor([[0.2, -0.4]])
    grid = torch.linspace(0, 1, 4001)[1:-1].reshape(-1, 1, 1)
    with torch.no_grad():
        members = [mix.ensemble.member(i).log_prob(grid, x).exp() for i in range(2)]
        mixture = mix.log_prob(grid, x).exp()
    assert torch.allclose(mixture, (members[0] + members[1]) / 2, rtol=1e-5, atol=1e-6)
    assert torch.trapezoid(mixture[:, 0], grid[:, 0, 0]).item() == pytest.approx(1.0, abs=2e-3)
    # the members are far apart, so a wrong mixture (one member, or a product) would fail below
    assert (members[0] - members[1]).abs().max().item() > 1.0


def test_mixture_samples_follow_the_mixture_density():
    mix = _two_member_mixture()
    x = torch.tensor([[0.2, -0.4], [1.0, 0.5]])
    s = mix.sample(4000, x, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4000, 2, 1) and bool(((s > 0) & (s < 1)).all())
    grid = torch.linspace(0, 1, 4001)[1:-1]
    for j in range(2):
        with torch.no_grad():
            dens = mix.log_prob(grid.reshape(-1, 1, 1), x[j:j + 1]).exp()[:, 0].double().numpy()
        cdf = sps.rv_histogram((dens[:-1], grid.double().numpy()), density=True).cdf
        assert sps.kstest(s[:, j, 0].double().numpy(), cdf).pvalue > 1e-3
        for i in range(2):  # while neither member alone passes
            alone = mix.ensemble.member(i).sample(4000, x[j:j + 1], generator=torch.Generator().manual_seed(0))[:, 0, 0]
            assert sps.kstest(alone.double().numpy(), cdf).pvalue < 1e-3
    # any prefix is a mixture sample: both members appear in the first 100 draws
    first = s[:100, 0, 0]
    assert (first < 0.5).any() and (first > 0.5).any()
    assert mix.sample(3, x[0]).shape == (3, 1)


def test_trained_mixture_is_close_to_the_exact_posterior(tmp_path):
    from sbilab.estimators.posterior import PosteriorMixture

    data, test = gaussian_data(3000, 5), gaussian_data(2000, 6)
    torch.manual_seed(0)
    est = PosteriorEstimator.from_events(data, SPACE, transforms=2, hidden=(32, 32))
    ens = fit(Ensemble(est, 3), npe_loss, data, epochs=25, batch_size=256, learning_rate=3e-3, patience=None, seed=0,
              progress=False).model
    mix = PosteriorMixture(ens.eval())
    exact = sum(
        torch.as_tensor(sps.truncnorm.logpdf(test.theta[:, j].numpy(), (lo - test.x[:, j].numpy()) / SIGMA,
                                             (hi - test.x[:, j].numpy()) / SIGMA, loc=test.x[:, j].numpy(), scale=SIGMA))
        for j, (lo, hi) in enumerate([(-3.0, 3.0), (0.0, 2.0)])
    ).float()
    with torch.no_grad():
        kl_mix = (exact - mix.log_prob(test.theta, test.x)).mean().item()
        kl_members = (exact - ens(test.theta, test.x)).mean(1)
    # expected KL(p || q) over the prior predictive with the exact p: members 0.058-0.063, mixture 0.051
    assert kl_mix < 0.055
    assert kl_mix < kl_members.min().item()
    # published and loaded back (HDF5 + JSON): the same mixture density and the same draws
    from sbilab.publish import load, save

    loaded = load(save(tmp_path / "mixture.h5", mix)).eval()
    assert isinstance(loaded, PosteriorMixture) and loaded.k == 3
    with torch.no_grad():
        assert torch.allclose(loaded.log_prob(test.theta[:50], test.x[:50]), mix.log_prob(test.theta[:50], test.x[:50]), atol=1e-5)
    draws = [m.sample(20, test.x[:4], generator=torch.Generator().manual_seed(1)) for m in (mix, loaded)]
    assert torch.allclose(draws[0], draws[1], atol=1e-5)


def test_mixture_bad_input():
    from sbilab.estimators.posterior import PosteriorMixture
    from sbilab.inference.sbi import SbiPosterior

    mix = _two_member_mixture()
    with pytest.raises(ConfigError, match="Ensemble of PosteriorEstimators"):
        PosteriorMixture(PosteriorEstimator(mix.space, 2, transforms=1, hidden=(8,)))
    with pytest.raises(ShapeMismatchError):
        mix.sample(5, torch.zeros(1, 3))
    with pytest.raises(InvalidEventsError):
        mix.log_prob(torch.tensor([[0.5]]), torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(OutOfSupportError):
        mix.log_prob(torch.tensor([[1.5]]), torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="positive integer"):
        mix.sample(0, torch.zeros(1, 2))
    # sbi's posterior interface accepts the mixture like a single posterior
    post = SbiPosterior(mix, generator=torch.Generator().manual_seed(0))
    assert post.sample((6,), x=torch.zeros(1, 2)).shape == (6, 1)
    assert torch.isinf(post.log_prob(torch.tensor([[1.5], [0.5]]), x=torch.zeros(1, 2))[0])
