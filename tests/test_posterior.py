"""PosteriorEstimator: bounded flow maths, training with fit() against a closed-form posterior, bad input."""

import math

import pytest
import torch
from scipy import stats as sps

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
    res = fit(PosteriorEstimator.from_events(data, SPACE, transforms=1, hidden=(8,)), npe_loss, data, epochs=2, ensemble=2,
              batch_size=200, seed=0, progress=False)
    assert res.model(data.theta[:5], data.x[:5]).shape == (2, 5)
    assert math.isfinite(res.history["train_loss"][-1])
