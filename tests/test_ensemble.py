"""Tests of sbilab.nets.ensemble: stacking, member extraction, vmap and loop paths, input gradients."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from sbilab.exceptions import ConfigError, SbilabError, ShapeMismatchError
from sbilab.nets import ResidualMLP, Standardize
from sbilab.nets.ensemble import Ensemble


class Pair(nn.Module):
    """f(x, theta) = MLP([x, theta]) -> (N,), the shape of a ratio estimator."""

    def __init__(self, d: int = 2, p: int = 2) -> None:
        super().__init__()
        self.net = ResidualMLP(d + p, 1, hidden=16, blocks=1, activation="silu")

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        return self.net(torch.cat([x, theta], dim=-1)).squeeze(-1)


class Branchy(Pair):
    """Data-dependent control flow: vmap cannot trace it."""

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        out = super().forward(x, theta)
        if bool(out.sum() > 1e9):  # never true, but vmap refuses the data-dependent branch
            out = out * 0
        return out


def _inputs(n: int = 7) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)


@pytest.mark.parametrize("vectorize", [True, False])
def test_members_independent_and_member_reproduces_output(vectorize: bool) -> None:
    ens = Ensemble(Pair(), 4, generator=torch.Generator().manual_seed(0), vectorize=vectorize)
    x, theta = _inputs()
    out = ens(x, theta)
    assert out.shape == (4, 7)
    for i in range(4):
        torch.testing.assert_close(ens.member(i)(x, theta), out[i], rtol=1e-6, atol=1e-6)
    # independent initialisation: all members differ pairwise
    w = ens.stacked_parameters()["net.inp.weight"]
    assert all(not torch.equal(w[i], w[j]) for i in range(4) for j in range(i + 1, 4))
    # seeded: same generator seed gives the same members
    again = Ensemble(Pair(), 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.stacked_parameters()["net.inp.weight"], w)


def test_vmap_and_loop_agree_and_fallback() -> None:
    template = Branchy()
    auto = Ensemble(template, 3, generator=torch.Generator().manual_seed(2))
    x, theta = _inputs()
    with pytest.warns(RuntimeWarning, match="vmap cannot trace Branchy.forward.*data-dependent control flow") as caught:
        out = auto(x, theta)
        again = auto(x, theta)  # the loop from now on, without a second warning
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert auto.vectorize is False  # fell back to the loop
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    plain = Ensemble(Pair(), 3, generator=torch.Generator().manual_seed(2))
    plain.load_state_dict(auto.state_dict())
    torch.testing.assert_close(plain(x, theta), out, rtol=1e-6, atol=1e-6)
    assert plain.vectorize is True
    forced = Ensemble(template, 3, vectorize=True)
    with pytest.raises(RuntimeError, match="vmap"):
        forced(x, theta)


class WrongShape(Pair):
    """A genuine bug of the template (a shape error): not a reason to fall back."""

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        return self.net(x)  # the network expects [x, theta]


class Picky(Pair):
    """A genuine argument error of the template."""

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        raise ValueError("Picky: theta must be positive")


@pytest.mark.parametrize("cls, error", [(WrongShape, RuntimeError), (Picky, ValueError)])
def test_genuine_errors_are_raised_not_looped(cls, error, recwarn) -> None:
    ens = Ensemble(cls(), 2, generator=torch.Generator().manual_seed(2))
    x, theta = _inputs()
    with pytest.raises(error) as info:
        ens(x, theta)
    assert "vmap" not in str(info.value)
    assert ens.vectorize is None  # neither vmap nor the loop was chosen: the error was the template's
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_template_is_public_and_describes_the_members() -> None:
    template = Pair()
    ens = Ensemble(template, 2, generator=torch.Generator().manual_seed(0))
    assert type(ens.template) is Pair and ens.template is not template
    assert [n for n, _ in ens.template.named_parameters()] == list(ens.stacked_parameters())


@pytest.mark.parametrize("vectorize", [True, False])
def test_per_member_input_gradients(vectorize: bool) -> None:
    k, n = 3, 5
    ens = Ensemble(Pair(), k, generator=torch.Generator().manual_seed(3), vectorize=vectorize)
    x, theta = _inputs(n)
    theta_k = theta.expand(k, n, 2).clone().requires_grad_()
    out = ens(x.expand(k, n, 2), theta_k, stacked=True)
    assert out.shape == (k, n)
    (grad,) = torch.autograd.grad(out.sum(), theta_k, create_graph=True)
    (grad ** 2).sum().backward()
    for i in range(k):
        member = ens.member(i)
        t = theta.clone().requires_grad_()
        (g_i,) = torch.autograd.grad(member(x, t).sum(), t, create_graph=True)
        torch.testing.assert_close(grad[i], g_i, rtol=1e-5, atol=1e-6)
        (g_i ** 2).sum().backward()
        checked = 0
        for name, p in member.named_parameters():
            stacked_grad = ens.stacked_parameters()[name].grad
            if p.grad is None:  # e.g. the output bias does not enter d out / d theta
                assert stacked_grad is None or not stacked_grad[i].any()
                continue
            torch.testing.assert_close(stacked_grad[i], p.grad, rtol=1e-4, atol=1e-6)
            checked += 1
        assert checked >= 4


def test_dropout_members_draw_different_masks() -> None:
    template = nn.Sequential(nn.Linear(3, 64), nn.Dropout(0.5))
    ens = Ensemble(template, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # identical members: differences come from dropout only
        for p in ens.stacked_parameters().values():
            p[1] = p[0]
    out = ens(torch.ones(4, 3))
    assert not torch.equal(out[0] == 0, out[1] == 0)
    ens.eval()
    out = ens(torch.ones(4, 3))
    torch.testing.assert_close(out[0], out[1])
    assert not ens.member(0).training


def test_errors_and_buffers() -> None:
    with pytest.raises(ConfigError, match="k must be"):
        Ensemble(nn.Linear(2, 1), 0)
    with pytest.raises(ConfigError, match="template"):
        Ensemble("not a module", 2)  # type: ignore[arg-type]
    ens = Ensemble(nn.Linear(2, 1), 2)
    with pytest.raises(ShapeMismatchError, match="leading axis"):
        ens(torch.zeros(5, 2), stacked=True)
    with pytest.raises(ConfigError, match="out of range"):
        ens.member(2)
    with pytest.raises(SbilabError, match="spec"):
        ens.spec()  # nn.Linear is not publishable
    # buffers (e.g. standardisation constants) are copied to every member, not re-initialised
    template = nn.Sequential(Standardize(3), nn.Linear(3, 1))
    template[0].set_from(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 5.0]]))
    ens = Ensemble(template, 2)
    assert torch.equal(ens.stacked_buffers()["0.mean"], torch.tensor([[2.0, 2.0, 4.0]] * 2))
    assert torch.equal(ens.member(1)[0].std, torch.tensor([1.0, 1.0, 1.0]))
    with pytest.warns(UserWarning, match="same weights"):
        Ensemble(nn.LayerNorm(3), 2)  # deterministic initialisation: members cannot differ


def test_publish_round_trip(tmp_path) -> None:
    from sbilab.estimators import RatioEstimator
    from sbilab.publish import load, save
    from sbilab.simulators import GaussianLatent

    ens = Ensemble(RatioEstimator(GaussianLatent().space, 1, hidden=(8,)), 3, generator=torch.Generator().manual_seed(0))
    path = save(tmp_path / "ens.h5", ens)
    back = load(path)
    assert isinstance(back, Ensemble) and back.k == 3
    x, theta = torch.randn(6, 1), torch.full((6, 1), 0.3)
    torch.testing.assert_close(back(x, theta), ens.eval()(x, theta), rtol=0, atol=0)
