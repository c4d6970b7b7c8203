"""ConditionalDensity: exact conditional densities learned by fit(), set contexts, bounds, publishing, bad input."""

import math

import pytest
import torch
from scipy import stats as sps

from sbilab.nets.ensemble import Ensemble
from sbilab.estimators import ConditionalDensity, PosteriorEstimator, density_loss, get_loss
from sbilab.events import Events
from sbilab.exceptions import ConfigError, InvalidEventsError, MissingAugmentedDataError, OutOfSupportError, ShapeMismatchError
from sbilab.nets.flows import FlowSpec
from sbilab.simulators import ParameterSpace
from sbilab.training import fit

A = torch.tensor([[1.0, -0.5], [0.3, 0.8]])
B = torch.tensor([0.5, -1.0])
L = torch.tensor([[0.6, 0.0], [0.3, 0.4]])  # Cholesky factor of Σ


def linear_gaussian(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """c ~ N(0, I); y | c ~ N(A c + b, L Lᵀ)."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, 2, generator=g)
    return c, c @ A.T + B + torch.randn(n, 2, generator=g) @ L.T


def exact_log_prob(y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.distributions.MultivariateNormal(c @ A.T + B, scale_tril=L).log_prob(y)


@pytest.fixture(scope="module")
def linear() -> ConditionalDensity:
    """Trained on target ``latent``; a third of the events are shifted by +5 but carry weight 0."""
    c, y = linear_gaussian(4000, 0)
    cb, yb = linear_gaussian(2000, 1)
    x = torch.cat([c, cb])
    events = Events(x=x, theta=x.new_zeros(len(x), 0), latent=torch.cat([y, yb + 5.0]),
                    weights=torch.cat([torch.ones(4000), torch.zeros(2000)]))
    torch.manual_seed(0)
    q = ConditionalDensity.from_events(events, target="latent", flow=FlowSpec("maf", transforms=1, hidden=(32, 32)))
    res = fit(q, get_loss("density", target="latent"), events, epochs=30, batch_size=256, learning_rate=1e-2,
              patience=None, seed=0, progress=False)
    return res.model.eval()


def test_linear_gaussian_log_prob_matches_the_exact_conditional(linear):
    c, y = linear_gaussian(2000, 2)  # held out
    with torch.no_grad():
        diff = exact_log_prob(y, c) - linear.log_prob(y, c)
    # KL(p || q) estimated over p(c) p(y|c); zero-weight contamination ignored (else KL ~ 1)
    assert abs(diff.mean().item()) < 0.025  # measured 0.009
    assert diff.abs().mean().item() < 0.12  # measured 0.085


def test_linear_gaussian_samples_have_the_exact_moments(linear):
    contexts = torch.tensor([[0.0, 0.0], [0.8, -0.6], [-0.7, 0.4]])
    draws = linear.sample(4000, contexts, generator=torch.Generator().manual_seed(3))
    assert draws.shape == (4000, 3, 2)
    for i in range(3):
        # measured max 0.076 (fit seed 0), 0.030 (1), 0.075 (2): the one-transform flow's misfit, the training
        # data's own least-squares mean is within 0.011; the KL test above is the sharper check
        assert torch.allclose(draws[:, i].mean(0), contexts[i] @ A.T + B, atol=0.1)
        assert torch.allclose(torch.cov(draws[:, i].T), L @ L.T, atol=0.05)  # measured max 0.015
    assert linear.sample(5, contexts[0]).shape == (5, 2)  # one unbatched context


def test_publish_round_trip_same_density_and_draws(linear, tmp_path):
    from sbilab.publish import load, save

    loaded = load(save(tmp_path / "density.h5", linear))
    assert type(loaded) is ConditionalDensity and loaded.flow_spec == linear.flow_spec
    c, y = linear_gaussian(50, 4)
    with torch.no_grad():
        assert torch.equal(loaded.log_prob(y, c), linear.log_prob(y, c))
    draws = [m.sample(7, c[:3], generator=torch.Generator().manual_seed(5)) for m in (linear, loaded)]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], linear.sample(7, c[:3], generator=torch.Generator().manual_seed(6)))


def _sets(n: int, seed: int) -> Events:
    """Up to 6 entries of one feature; y = sum of the real entries + N(0, 0.3²); padding is garbage."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, 1, generator=g)
    mask = torch.arange(6) < torch.randint(1, 7, (n, 1), generator=g)
    total = (x[..., 0] * mask).sum(1, keepdim=True)
    x = torch.where(mask.unsqueeze(-1), x, 100 * torch.rand(n, 6, 1, generator=g))
    return Events(x=x, theta=total + 0.3 * torch.randn(n, 1, generator=g), mask=mask)


def test_set_context_learns_the_sum_and_ignores_padding():
    data = _sets(3000, 0)
    torch.manual_seed(0)
    q = ConditionalDensity.from_events(data, flow=FlowSpec("maf", transforms=1, hidden=(32,)),
                                       embedding={"kind": "deepsets", "out_features": 8, "hidden": [32], "latent": 16})
    q = fit(q, density_loss, data, epochs=40, batch_size=256, learning_rate=1e-2, patience=None, seed=0, progress=False).model.eval()
    test = _sets(1000, 1)
    total = (torch.where(test.mask, test.x[..., 0], 0.0)).sum(1)
    exact = torch.as_tensor(sps.norm.logpdf(test.theta[:, 0].numpy(), total.numpy(), 0.3)).float()
    with torch.no_grad():
        learned = q.log_prob(test.theta, test.x, mask=test.mask)
        # padded entries changed arbitrarily (other numbers, NaN) do not change the density
        other = torch.where(test.mask.unsqueeze(-1), test.x, -7.0 * torch.ones_like(test.x))
        nan = torch.where(test.mask.unsqueeze(-1), test.x, torch.full_like(test.x, float("nan")))
        assert torch.equal(q.log_prob(test.theta, other, mask=test.mask), learned)
        assert torch.allclose(q.log_prob(test.theta, nan), learned, atol=1e-6)  # all-NaN rows are padding
    assert abs((exact - learned).mean().item()) < 0.03  # measured 0.013
    assert (exact - learned).abs().mean().item() < 0.16  # measured 0.105
    draws = q.sample(2000, test.x[:3], mask=test.mask[:3], generator=torch.Generator().manual_seed(1))
    assert torch.allclose(draws.mean(0)[:, 0], total[:3], atol=0.08)  # measured max 0.038
    assert torch.allclose(draws.std(0)[:, 0], torch.full((3,), 0.3), rtol=0.25)  # measured 0.29-0.35


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (0.5, None), (None, -2.0), (-math.inf, math.inf)])
def test_bounded_samples_inside_and_density_normalised(low, high):
    lo, hi = -math.inf if low is None else low, math.inf if high is None else high
    # float64 throughout, so that y = lo + e^t resolves e^t down to e^-30
    # y = map(t): the box's affine map for two-sided bounds, lo + e^t / hi - e^t for one side, 30 t for none
    if math.isfinite(lo) and math.isfinite(hi):
        to_y, jac, t = (lambda t: lo + (hi - lo) * (t + 1) / 2), (lambda t: torch.full_like(t, (hi - lo) / 2)), (-1.0, 1.0)
    elif math.isfinite(lo):
        to_y, jac, t = (lambda t: lo + torch.exp(t)), torch.exp, (-30.0, 8.0)
    elif math.isfinite(hi):
        to_y, jac, t = (lambda t: hi - torch.exp(t)), torch.exp, (-30.0, 8.0)
    else:
        to_y, jac, t = (lambda t: 30 * t), (lambda t: torch.full_like(t, 30.0)), (-1.0, 1.0)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(500, 1, generator=g, dtype=torch.float64)
    events = Events(x=torch.randn(500, 2, generator=g, dtype=torch.float64), theta=to_y(t[0] + (t[1] - t[0]) * (0.5 + 0.2 * u)))
    torch.manual_seed(1)
    q = ConditionalDensity(1, 2, low=[low], high=[high], flow=FlowSpec("nsf", transforms=2, hidden=(16,))).double()
    q.standardize_from(events)  # a non-trivial standardisation of the unconstrained variable
    c = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    draws = q.sample(3000, c, generator=torch.Generator().manual_seed(2))[:, 0, 0]
    assert bool(((draws >= lo) & (draws <= hi)).all())
    grid = torch.linspace(*t, 40001, dtype=torch.float64)[1:-1]
    with torch.no_grad():
        dens = q.log_prob(to_y(grid).reshape(-1, 1, 1), c).exp()[:, 0]
    assert torch.trapezoid(dens * jac(grid), grid).item() == pytest.approx(1.0, abs=2e-3)


def test_ensemble_training_and_posterior_is_a_density(tmp_path):
    c, y = linear_gaussian(400, 7)
    events = Events(x=c, theta=c.new_zeros(400, 0), latent=y)
    q = ConditionalDensity.from_events(events, target="latent", flow=FlowSpec("realnvp", transforms=1, hidden=(8,)))
    res = fit(Ensemble(q, 2), get_loss("density", target="latent"), events, epochs=2, batch_size=100, seed=0, progress=False)
    assert res.model(y[:5], c[:5]).shape == (2, 5) and math.isfinite(res.history["train_loss"][-1])
    from sbilab.publish import load, save

    loaded = load(save(tmp_path / "ensemble.h5", res.model))  # an ensemble of densities publishes like any module
    with torch.no_grad():
        assert torch.equal(loaded(y[:5], c[:5]), res.model.eval()(y[:5], c[:5]))
    assert torch.equal(loaded.member(1).log_prob(y[:5], c[:5]), res.model.member(1).log_prob(y[:5], c[:5]))
    space = ParameterSpace(("a",), low=(0.0,), high=(1.0,))
    post = PosteriorEstimator(space, 2, transforms=1, hidden=(8,))
    assert isinstance(post, ConditionalDensity) and post.flow_spec == FlowSpec("nsf", 1, (8,), 8)
    theta = torch.full((3, 1), 0.4)
    batch = Events(x=c[:3], theta=theta)
    assert torch.equal(density_loss(post, batch), -post(theta, c[:3]))  # target theta = NPE


def test_bad_input(linear):
    c, y = linear_gaussian(4, 9)
    with pytest.raises(ShapeMismatchError, match="context"):
        linear.log_prob(y, torch.zeros(4, 3))
    with pytest.raises(ShapeMismatchError, match="mask"):
        linear.log_prob(y, c, mask=torch.ones(4, 2, dtype=torch.bool))
    with pytest.raises(ShapeMismatchError, match="target"):
        linear.log_prob(torch.zeros(4, 3), c)
    with pytest.raises(ShapeMismatchError, match="target"):
        linear.log_prob(torch.zeros(3, 2), c)
    with pytest.raises(InvalidEventsError, match="NaN"):
        linear.log_prob(y, torch.tensor([[float("nan"), 0.0]]).expand(4, 2))
    with pytest.raises(InvalidEventsError, match="NaN"):
        linear.log_prob(torch.full((4, 2), float("nan")), c)
    with pytest.raises(ConfigError, match="positive integer"):
        linear.sample(0, c)
    bounded = ConditionalDensity(1, 2, low=[0.0], high=[1.0], flow=FlowSpec(transforms=1, hidden=(4,)))
    with pytest.raises(OutOfSupportError, match="outside the bounds"):
        bounded.log_prob(torch.tensor([[0.5], [1.5]]), torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="unknown flow kind"):
        ConditionalDensity(1, 2, flow={"kind": "glow"})
    with pytest.raises(ConfigError, match="low < high"):
        ConditionalDensity(1, 2, low=[1.0], high=[0.0])
    with pytest.raises(ConfigError, match="entries"):
        ConditionalDensity(2, 2, low=[0.0])
    with pytest.raises(ConfigError, match="malformed"):
        ConditionalDensity.from_spec({**linear.spec(), "bins": 3})
    with pytest.raises(ConfigError, match="option dicts"):
        ConditionalDensity(1, 2, embedding=torch.nn.Linear(2, 4)).spec()
    events = Events(x=c, theta=y)
    with pytest.raises(MissingAugmentedDataError, match="latent"):
        density_loss(linear, events, target="latent")
    with pytest.raises(MissingAugmentedDataError, match="spectator"):
        density_loss(linear, events, target="spectator")
    with pytest.raises(ConfigError, match="target must be one of"):
        get_loss("density", target="weights")(linear, events)
    with pytest.raises(MissingAugmentedDataError, match="latent"):
        ConditionalDensity.from_events(events, target="latent")
    with pytest.raises(OutOfSupportError):
        ConditionalDensity.from_events(Events(x=c, theta=y), low=[0.0, 0.0])
