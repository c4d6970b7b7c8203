"""fit with one weight column per ensemble member (bootstrap replicas trained as one ensemble)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from sbilab import Events
from sbilab.exceptions import ShapeMismatchError
from sbilab.nets.ensemble import Ensemble
from sbilab.training import fit


def mse(model: nn.Module, batch: Events) -> Tensor:
    return (model(batch.x) - batch.theta).pow(2).squeeze(-1)  # (N,) or (K, N)


def weighted_lstsq(x: Tensor, y: Tensor, w: Tensor) -> Tensor:
    """Closed-form weighted least squares (w1, w2, b), float64."""
    a = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    sw = w.double().sqrt()[:, None]
    return torch.linalg.lstsq(a * sw, y.double() * sw).solution.squeeze(-1)


def test_each_member_minimises_its_own_weighted_loss() -> None:
    # y = 2 x1 - 3 x2 + 0.5 + noise; member k sees Poisson(1) bootstrap weights w[:, k]: its optimum
    # is the weighted least-squares solution of its own column, which differs between columns
    g = torch.Generator().manual_seed(0)
    n, k = 400, 3
    x = torch.randn(n, 2, generator=g)
    y = x @ torch.tensor([[2.0], [-3.0]]) + 0.5 + 0.5 * torch.randn(n, 1, generator=g)
    w = torch.poisson(torch.ones(n, k), generator=g)
    ev = Events(x=x, theta=y, weights=w)
    ens = Ensemble(nn.Linear(2, 1), k, generator=torch.Generator().manual_seed(1))
    fit(ens, mse, ev, epochs=300, batch_size=n, learning_rate=0.1, validation_fraction=0,
        patience=None, progress=False)
    params = ens.stacked_parameters()
    for j in range(k):
        got = torch.cat([params["weight"][j].reshape(-1), params["bias"][j]]).detach().double()
        exact = weighted_lstsq(x, y, w[:, j])
        torch.testing.assert_close(got, exact, atol=1e-4, rtol=0)
    spread = [weighted_lstsq(x, y, w[:, j]) for j in range(k)]
    assert float((spread[0] - spread[1]).abs().max()) > 1e-2  # the columns really differ


def test_member_weights_equal_separate_runs_batch_by_batch() -> None:
    # mini-batches: the ensemble with per-member weights takes exactly the steps of K separate runs
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 2, generator=g)
    y = torch.sin(x[:, :1]) + x[:, 1:] ** 2
    w = torch.rand(300, 2, generator=g) * 2
    template = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    ens = Ensemble(template, 2, generator=torch.Generator().manual_seed(3))
    starts = [ens.member(j) for j in range(2)]
    opts = dict(epochs=5, batch_size=64, learning_rate=1e-2, validation_fraction=0, patience=None, progress=False, seed=4,
                init="keep")  # every run starts from the members' weights drawn above
    fit(ens, mse, Events(x=x, theta=y, weights=w), **opts)
    for j in range(2):
        solo = fit(starts[j], mse, Events(x=x, theta=y, weights=w[:, j]), **opts).model
        with torch.no_grad():
            torch.testing.assert_close(ens(x)[j], solo(x), atol=1e-5, rtol=1e-5)


def test_member_weights_need_a_matching_ensemble() -> None:
    ev = Events(x=torch.randn(10, 2), theta=torch.randn(10, 1), weights=torch.ones(10, 3))
    with pytest.raises(ShapeMismatchError, match="K = 3"):
        fit(nn.Linear(2, 1), mse, ev, epochs=1, validation_fraction=0, patience=None, progress=False)
    with pytest.raises(ShapeMismatchError, match="K = 3"):
        fit(Ensemble(nn.Linear(2, 1), 2), mse, ev, epochs=1, validation_fraction=0, patience=None, progress=False)
