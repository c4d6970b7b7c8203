"""A learned surrogate of a whole simulator q(x|θ): a Simulator with exact (surrogate) likelihood and score, publishable."""

import pytest
import torch

from sbilab import publish
from sbilab.exceptions import InvalidEventsError, OutOfSupportError
from sbilab.nets.flows import FlowSpec
from sbilab.simulators import Simulator
from sbilab.simulators.toys import GaussianLatent
from sbilab.surrogates import SimulatorSurrogate, train_simulator_surrogate

TOY = GaussianLatent()  # x | θ ~ N(θ, σ_z² + σ_x²) = N(θ, 5): an exact target
FLOW = FlowSpec("maf", transforms=1, hidden=(16, 16))


@pytest.fixture(scope="module")
def surrogate():
    events = TOY.simulate(8000, generator=torch.Generator().manual_seed(0))
    return train_simulator_surrogate(events, TOY.space, flow=FLOW, epochs=15, batch_size=256, learning_rate=1e-2,
                                     observable_names=["x"], seed=1)


def test_surrogate_likelihood_and_score(surrogate):
    x = torch.linspace(-3.0, 3.0, 13).reshape(-1, 1)
    theta = torch.tensor([0.5])
    exact = TOY.log_prob(x, theta)
    assert float((surrogate.log_prob(x, theta).detach() - exact).abs().max()) < 0.06
    # the score is the θ-gradient of the surrogate's own density: its finite difference ...
    score = surrogate.score(x, theta)
    h = 1e-2
    with torch.no_grad():
        fd = (surrogate.log_prob(x, theta + h) - surrogate.log_prob(x, theta - h)) / (2 * h)
    assert torch.allclose(score[:, 0], fd, atol=2e-3)
    # ... with zero mean under the surrogate's own draws, E_q[∂θ log q] = 0 (a normalised density)
    draws = surrogate.sample(theta.expand(20000, 1), generator=torch.Generator().manual_seed(4)).x
    t = surrogate.score(draws, theta)[:, 0]
    assert abs(float(t.mean())) < 4 * float(t.std()) / 20000**0.5


def test_it_is_a_simulator(surrogate):
    assert isinstance(surrogate, Simulator)
    ev = surrogate.simulate(4000, theta=torch.tensor([1.0]), generator=torch.Generator().manual_seed(2))
    assert ev.x.shape == (4000, 1) and torch.equal(ev.theta, torch.ones(4000, 1))
    assert float(ev.x.mean()) == pytest.approx(1.0, abs=4 * 5**0.5 / 4000**0.5 + 0.05)
    assert float(ev.x.var()) == pytest.approx(5.0, rel=0.1)


def test_theta_outside_the_training_space_is_refused(surrogate):
    low, high = float(TOY.space.low[0]), float(TOY.space.high[0])
    with pytest.raises(OutOfSupportError, match="outside the parameter space"):
        surrogate.sample(torch.tensor([[high + 1.0]]))
    with pytest.raises(OutOfSupportError):
        surrogate.log_prob(torch.zeros(2, 1), torch.tensor([low - 0.5]))
    with pytest.raises(InvalidEventsError, match="no theta"):
        from sbilab.events import Events
        train_simulator_surrogate(Events.observed(torch.zeros(5, 1)), TOY.space, flow=FLOW, epochs=1)


def test_publish_round_trip(surrogate, tmp_path):
    loaded = publish.load(publish.save(tmp_path / "sur.h5", surrogate))
    assert isinstance(loaded, SimulatorSurrogate) and loaded.space.names == TOY.space.names
    x, theta = torch.randn(5, 1), torch.tensor([0.2])
    assert torch.equal(loaded.log_prob(x, theta), surrogate.log_prob(x, theta))
    a = loaded.sample(theta.expand(5, 1), generator=torch.Generator().manual_seed(3)).x
    b = surrogate.sample(theta.expand(5, 1), generator=torch.Generator().manual_seed(3)).x
    assert torch.equal(a, b)
