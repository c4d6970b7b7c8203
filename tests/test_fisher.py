"""Fisher information against closed forms (Gaussian toy) and quadrature (resonance toy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from sbilab.exceptions import ShapeMismatchError
from sbilab.simulators.toys import GaussianLatent
from sbilab.stats import fisher

SIM = GaussianLatent()  # x ~ N(theta, 5): per-event Fisher 1/5
THETA = torch.tensor([0.3], dtype=torch.float64)
SIGMA = math.sqrt(5.0)


@pytest.fixture(scope="module")
def events():
    return SIM.simulate(100_000, theta=THETA, generator=torch.Generator().manual_seed(0))


def test_exact_fisher_of_gaussian_is_one_fifth():
    info = fisher.exact_fisher(SIM, THETA, n_events=100_000, generator=torch.Generator().manual_seed(1))
    assert info.shape == (1, 1) and info.item() == pytest.approx(0.2, rel=0.02)
    assert fisher.sally_fisher(lambda x: SIM.score(x, THETA), torch.zeros(2, 1)).item() == pytest.approx(0.3**2 / 25)


def test_histogram_fisher_fine_and_coarse(events):
    x = events.x.double()
    t = SIM.score(x, THETA)
    fine = fisher.histogram_fisher(x, t, [np.linspace(-15, 15, 301)]).item()
    assert fine == pytest.approx(0.2, rel=0.02)
    # two bins split at theta keep exactly 2/pi of the information
    two = fisher.histogram_fisher(x, t, [[-30.0, 0.3, 30.0]]).item()
    assert two == pytest.approx(0.2 * 2 / math.pi, rel=0.02) and two < fine
    # the joint score t(x, z) = (z - theta)/sigma_z^2 gives the same histogram information in expectation
    t_joint = (events.latent.double() - THETA) / SIM.sigma_z**2
    assert fisher.histogram_fisher(x, t_joint, [[-30.0, 0.3, 30.0]]).item() == pytest.approx(0.2 * 2 / math.pi, rel=0.04)
    # a 2-D histogram of (x, noise) keeps what x keeps
    noise = torch.randn(len(x), 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    two_d = fisher.histogram_fisher(torch.cat([x, noise], 1), t, [[-30.0, 0.3, 30.0], [-9.0, 0.0, 9.0]]).item()
    assert two_d == pytest.approx(two, rel=0.03)


def test_counts_and_rate_fisher_closed_form():
    nu, edges = 1000.0, np.array([-np.inf, 0.3, np.inf])

    def counts(th):
        return nu * torch.as_tensor(np.diff(norm.cdf(edges, loc=float(th[0]), scale=SIGMA)))

    assert fisher.counts_fisher(counts, THETA).item() == pytest.approx(nu * 0.2 * 2 / math.pi, rel=1e-5)
    assert fisher.rate_fisher(lambda th: 100 * torch.exp(th[0] / 2), THETA).item() == pytest.approx(100 * math.exp(0.15) / 4, rel=1e-6)


def test_resonance_cramer_rao_bounds():
    from sbilab.simulators.toys import Resonance

    sim = Resonance()
    exact = sim.fisher_information()
    sigma = fisher.cramer_rao(exact, 1000)
    assert sigma[0].item() == pytest.approx(0.1434, abs=2e-4) and sigma[1].item() == pytest.approx(0.3238, abs=2e-4)
    mc = fisher.exact_fisher(sim, sim.space.reference, n_events=40_000, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(mc.diagonal().numpy(), exact.diagonal().numpy(), rtol=0.04)


def test_fisher_table(events):
    x = events.x.double()
    t = SIM.score(x, THETA)
    table = fisher.fisher_table(
        {"exact": SIM.fisher_information(), "x, 2 bins": fisher.histogram_fisher(x, t, [[-30.0, 0.3, 30.0]])},
        parameters=["theta"],
        n_events=100,
    )
    assert table.observables == ("exact", "x, 2 bins")
    assert table.kept[0][0] == 1.0 and table.kept[1][0] == pytest.approx(2 / math.pi, rel=0.02)
    assert table.sigma[0][0] == pytest.approx(math.sqrt(5 / 100))
    assert "x, 2 bins" in str(table)
    json.dumps(table.to_dict())
    with pytest.raises(ShapeMismatchError, match="reference"):
        fisher.fisher_table({"x": torch.eye(1)}, parameters=["theta"])
    with pytest.raises(ShapeMismatchError):
        fisher.histogram_fisher(x, t, [[0.0, 1.0], [0.0, 1.0]])


def test_cramer_rao_with_constraints_and_fixed_parameters():
    # x ~ N(mu + eta, 1) with eta ~ N(0, s): profiled width sqrt(1/n + s^2), fixed 1/sqrt(n)
    n, s = 100, 0.2
    f = torch.ones(2, 2, dtype=torch.float64)
    profiled = fisher.cramer_rao(f, n, names=["mu", "eta"], constraints={"eta": (0.0, s)})
    assert profiled[0].item() == pytest.approx(math.sqrt(1 / n + s**2), rel=1e-12)
    assert profiled[1].item() == pytest.approx(s, rel=1e-12)  # only mu + eta is measured: eta keeps its constraint's width
    assert fisher.cramer_rao(f, n, names=["mu", "eta"], fixed=["eta"]).tolist() == pytest.approx([1 / math.sqrt(n), 0.0], rel=1e-12)
    # without options: sqrt(diag((nI)^-1)) as before
    g = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    assert torch.allclose(fisher.cramer_rao(g, 10), torch.linalg.inv(10 * g).diagonal().sqrt(), rtol=1e-14)
    with pytest.raises(ShapeMismatchError, match="need names"):
        fisher.cramer_rao(f, n, fixed=["eta"])
    with pytest.raises(ShapeMismatchError, match=r"\['nu'\] are not among the parameter names"):
        fisher.cramer_rao(f, n, names=["mu", "eta"], constraints={"nu": (0.0, 1.0)})


def test_sally_fisher_passes_set_masks():
    """Sets of n_j real N(theta, 1) entries (NaN padding): the score is the sum of (x - theta) over real
    entries, so the per-event Fisher information is E[n_j] = 2 here (n_j uniform on 1..3)."""
    g = torch.Generator().manual_seed(0)
    n = 40_000
    mask = torch.arange(3) < torch.randint(1, 4, (n,), generator=g)[:, None]
    x = (0.3 + torch.randn(n, 3, 1, generator=g, dtype=torch.float64)).masked_fill(~mask[..., None], math.nan)

    def set_score(x, mask):
        return torch.where(mask, x[..., 0] - 0.3, torch.zeros((), dtype=x.dtype)).sum(1, keepdim=True)

    info = fisher.sally_fisher(set_score, x, mask=mask, batch_size=7000)
    assert info.item() == pytest.approx(2.0, rel=0.03)
