"""External simulators: callables and sbi-style simulators, seeding, shape and finiteness checks."""

import numpy as np
import pytest
import torch

from sbilab.exceptions import NonFiniteOutputError, ShapeMismatchError
from sbilab.simulators import CallableSimulator, ParameterSpace, from_sbi, ratio_training_data

SPACE = ParameterSpace(("a", "b"), low=(0.0, 1.0), high=(1.0, 3.0))


def shift_and_scale(theta, seed):
    """x = (a, b * a) + N(0, 0.5²) noise, from a seeded numpy generator."""
    rng = np.random.default_rng(seed)
    clean = np.stack([theta[:, 0], theta[:, 0] * theta[:, 1]], axis=1)
    return clean + 0.5 * rng.normal(size=clean.shape)


def test_vectorized_callable_values_and_reproducibility():
    sim = CallableSimulator(shift_and_scale, SPACE, ["u", "v"], numpy=True, seed_keyword="seed")
    theta = torch.tensor([0.5, 2.0]).expand(20000, 2)
    ev = sim.simulate(20000, theta=theta, generator=torch.Generator().manual_seed(1))
    assert ev.x.shape == (20000, 2) and ev.x.dtype == torch.get_default_dtype()
    mean, std = ev.x.double().mean(0), ev.x.double().std(0)
    torch.testing.assert_close(mean, torch.tensor([0.5, 1.0], dtype=torch.float64), atol=0.015, rtol=0)
    torch.testing.assert_close(std, torch.tensor([0.5, 0.5], dtype=torch.float64), atol=0.01, rtol=0)
    again = sim.simulate(20000, theta=theta, generator=torch.Generator().manual_seed(1))
    other = sim.simulate(20000, theta=theta, generator=torch.Generator().manual_seed(2))
    assert torch.equal(ev.x, again.x) and not torch.equal(ev.x, other.x)


def test_row_by_row_callable_with_global_rng_is_reproducible():
    def one_point(theta):  # uses numpy's global generator, returns a scalar
        return float(theta[0] + np.random.normal())

    sim = CallableSimulator(one_point, SPACE, vectorized=False, numpy=True, progress=False)
    assert sim.observable_names == ("x0",)
    state = np.random.get_state()[1].copy()
    a = sim.simulate(50, generator=torch.Generator().manual_seed(3))
    b = sim.simulate(50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.x, b.x) and torch.equal(a.theta, b.theta)
    assert np.array_equal(np.random.get_state()[1], state)  # the global numpy state is restored
    resid = (a.x[:, 0] - a.theta[:, 0]).double()
    assert abs(resid.mean().item()) < 0.5 and 0.6 < resid.std().item() < 1.4


def test_shape_and_finiteness_errors():
    bad_shape = CallableSimulator(lambda t: torch.zeros(t.shape[0], 3), SPACE, ["x", "y"])
    with pytest.raises(ShapeMismatchError, match=r"expected \(4, 2\)"):
        bad_shape.simulate(4, generator=torch.Generator().manual_seed(0))

    def nan_for_large_a(theta):
        x = theta.clone()
        x[theta[:, 0] > 0.5, 1] = float("nan")
        return x

    sim = CallableSimulator(nan_for_large_a, SPACE, ["x", "y"])
    with pytest.raises(NonFiniteOutputError, match="NaN or inf"):
        sim.simulate(100, generator=torch.Generator().manual_seed(0))
    assert len(sim.simulate(5, theta=torch.tensor([0.2, 2.0]))) == 5


def test_sbi_style_simulator_and_prior():
    prior = torch.distributions.Independent(torch.distributions.Uniform(torch.tensor([-2.0, 0.5]), torch.tensor([2.0, 1.5])), 1)

    def simulator(theta):
        return theta[:, :1] + theta[:, 1:] * torch.randn(theta.shape[0], 3)

    sim = from_sbi(simulator, prior, names=["mu", "sigma"])
    assert sim.space.names == ("mu", "sigma") and sim.observable_names == ("x0", "x1", "x2")
    torch.testing.assert_close(sim.space.low, torch.tensor([-2.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(sim.space.high, torch.tensor([2.0, 1.5], dtype=torch.float64))
    ev = sim.simulate(5000, theta=torch.tensor([1.0, 0.8]), generator=torch.Generator().manual_seed(0))
    assert abs(ev.x.double().mean().item() - 1.0) < 0.03 and abs(ev.x.double().std().item() - 0.8) < 0.02
    again = sim.simulate(5000, theta=torch.tensor([1.0, 0.8]), generator=torch.Generator().manual_seed(0))
    assert torch.equal(ev.x, again.x)
    data = ratio_training_data(sim, 100, generator=torch.Generator().manual_seed(1), augmented=False)
    assert len(data) == 200 and data.label.sum().item() == 100


def test_sbi_box_uniform_prior():
    utils = pytest.importorskip("sbi.utils")
    prior = utils.BoxUniform(low=torch.zeros(2), high=torch.tensor([1.0, 4.0]))
    sim = from_sbi(lambda t: t**2, prior)
    assert sim.space.names == ("theta_0", "theta_1")
    torch.testing.assert_close(sim.space.high, torch.tensor([1.0, 4.0], dtype=torch.float64))
    ev = sim.simulate(10, theta=torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(ev.x, torch.tensor([0.25, 4.0]).expand(10, 2))
