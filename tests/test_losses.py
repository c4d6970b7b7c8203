"""Every loss against hand computations on tiny tensors, including the score terms and ensembles."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from sbilab.events import Events
from sbilab.estimators import losses as L
from sbilab.exceptions import ConfigError, MissingAugmentedDataError
from sbilab.nets.ensemble import Ensemble

VAR = 5.0  # sigma_z^2 + sigma_x^2 of the Gaussian latent toy


class LinearInTheta(nn.Module):
    """log r̂(x|θ) = a + b·θ with a = x[:, 0], b = x[:, 1]: output and θ-gradient are set by the data."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x, theta, mask=None):
        return self.scale * (x[:, 0] + x[:, 1] * theta[:, 0])


class ExactGaussianRatio(nn.Module):
    """The exact log r(x|θ) = log N(x; θ, √5) − log N(x; 0, √5) of the Gaussian toy."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, theta, mask=None):
        return (-(x[:, 0] - theta[:, 0]) ** 2 + x[:, 0] ** 2) / (2 * VAR) + self.dummy


class ExactGaussianDensity(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, theta):
        return -0.5 * (x[:, 0] - theta[:, 0]) ** 2 / VAR - 0.5 * math.log(2 * math.pi * VAR) + self.dummy


def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


@pytest.fixture()
def batch() -> Events:
    torch.manual_seed(0)
    theta = torch.tensor([[0.5], [-1.0], [1.5], [0.2]], dtype=torch.float64)
    log_r = torch.tensor([0.3, -0.7, 1.2, 0.0], dtype=torch.float64)
    score = torch.tensor([[0.4], [-0.2], [0.9], [0.1]], dtype=torch.float64)
    a = log_r - score[:, 0] * theta[:, 0]
    x = torch.stack([a, score[:, 0]], dim=1)  # the linear model reproduces log_r_joint and score_joint exactly
    label = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    return Events(x=x, theta=theta, log_r_joint=log_r, score_joint=score, label=label)


def test_carl_is_the_binary_cross_entropy(batch: Events) -> None:
    out = L.carl_loss(LinearInTheta().double(), batch)
    expected = [_bce(lr, y) for lr, y in zip(batch.log_r_joint.tolist(), batch.label.tolist())]
    assert out.tolist() == pytest.approx(expected, rel=1e-12)


def test_rolr_and_rascal_vanish_at_the_joint_quantities(batch: Events) -> None:
    model = LinearInTheta().double()
    assert torch.equal(L.rolr_loss(model, batch), torch.zeros(4, dtype=torch.float64))
    assert L.rascal_loss(model, batch, alpha=3.0).abs().max().item() < 1e-15


def test_rolr_regresses_r_on_reference_events_and_inverse_r_on_theta_events(batch: Events) -> None:
    model = LinearInTheta().double()
    shifted = batch.replace(log_r_joint=batch.log_r_joint - 0.5)  # target r' = r e^{-1/2}
    r = batch.log_r_joint.exp()
    expected = torch.where(batch.label > 0.5, (1 / r - 1 / (r * math.exp(-0.5))) ** 2, (r - r * math.exp(-0.5)) ** 2)
    assert torch.allclose(L.rolr_loss(model, shifted), expected, rtol=1e-12)


class _Constant(nn.Module):
    """log r̂ = c for every event."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c, dtype=torch.float64))

    def forward(self, x, theta, mask=None):
        return self.c + 0.0 * theta[:, 0]  # θ-independent, but on the graph for the score term


def test_rolr_clips_targets_and_predictions_in_log_space() -> None:
    # joint log-ratios far beyond ±10 (and a prediction of ±12) give the loss of the clipped values
    log_r = torch.tensor([40.0, -40.0, 3.0, -3.0], dtype=torch.float64)
    label = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    x = torch.zeros(4, 2, dtype=torch.float64)
    ev = Events(x=x, theta=torch.zeros(4, 1, dtype=torch.float64), log_r_joint=log_r, label=label)
    e = math.exp
    for c in (12.0, -12.0):
        model = _Constant(c)
        out = L.rolr_loss(model, ev)
        cc = max(-10.0, min(10.0, c))
        expected = [(e(cc) - e(10.0)) ** 2, (e(-cc) - e(10.0)) ** 2, (e(-cc) - e(-3.0)) ** 2, (e(cc) - e(-3.0)) ** 2]
        assert out.tolist() == pytest.approx(expected, rel=1e-12)
        (grad,) = torch.autograd.grad(out.sum(), model.c)
        assert grad.item() == 0.0  # a clipped prediction gets no gradient
    with pytest.raises(ConfigError, match="clip"):
        L.rolr_loss(_Constant(0.0), ev, clip=0.0)


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_rolr_minimiser_is_the_conditional_mean_of_r_or_inverse_r(label: float) -> None:
    # one x, joint log-ratios z: reference events (y = 0) give r̂ = E[r], theta events (y = 1) 1/r̂ = E[1/r]
    log_r = torch.tensor([-2.5, -0.3, 0.4, 1.9, 2.4], dtype=torch.float64)
    ev = Events(x=torch.zeros(5, 2, dtype=torch.float64), theta=torch.zeros(5, 1, dtype=torch.float64),
                log_r_joint=log_r, label=torch.full((5,), label, dtype=torch.float64))
    exact = math.log(log_r.exp().mean()) if label == 0.0 else -math.log((-log_r).exp().mean())
    best = _Constant(exact)
    (grad,) = torch.autograd.grad(L.rolr_loss(best, ev).sum(), best.c)
    assert abs(grad.item()) < 1e-12
    for shift in (-0.05, 0.05):
        assert L.rolr_loss(_Constant(exact + shift), ev).sum() > L.rolr_loss(best, ev).sum()
    # RASCAL with a zero score mismatch is ROLR with the same clip
    ev_s = ev.replace(score_joint=torch.zeros(5, 1, dtype=torch.float64))
    assert torch.allclose(L.rascal_loss(best, ev_s, alpha=2.0), L.rolr_loss(best, ev), rtol=1e-14)


def test_score_term_is_masked_to_events_drawn_at_theta(batch: Events) -> None:
    model = LinearInTheta().double()
    wrong = batch.replace(score_joint=batch.score_joint + 0.3)
    alpha = 2.0
    expected = alpha * 0.09 * batch.label  # only label-1 rows are penalised
    assert torch.allclose(L.rascal_loss(model, wrong, alpha=alpha), expected, atol=1e-14)
    assert torch.allclose(L.cascal_loss(model, wrong, alpha=alpha) - L.carl_loss(model, wrong), expected, atol=1e-14)
    assert torch.allclose(L.alices_loss(model, wrong, alpha=alpha) - L.alice_loss(model, wrong), expected, atol=1e-14)


def test_score_term_of_the_exact_gaussian_ratio_is_the_closed_form() -> None:
    x = torch.tensor([[-1.0], [0.3], [2.5]], dtype=torch.float64)
    theta = torch.tensor([[0.5], [-1.5], [1.0]], dtype=torch.float64)
    ev = Events(x=x, theta=theta, log_r_joint=torch.zeros(3, dtype=torch.float64),
                score_joint=torch.zeros(3, 1, dtype=torch.float64), label=torch.ones(3, dtype=torch.float64))
    model = ExactGaussianRatio().double()
    term = L.cascal_loss(model, ev, alpha=1.0) - L.carl_loss(model, ev)
    assert torch.allclose(term, ((x[:, 0] - theta[:, 0]) / VAR) ** 2, rtol=1e-12)


def test_alice_is_the_soft_label_cross_entropy_minimised_at_the_mean_label() -> None:
    log_r = torch.tensor([-1.0, 0.2, 2.0, 0.7], dtype=torch.float64)
    s = torch.sigmoid(log_r)
    x = torch.zeros(4, 2, dtype=torch.float64)  # one and the same x for all four events
    theta = torch.zeros(4, 1, dtype=torch.float64)
    ev = Events(x=x, theta=theta, log_r_joint=log_r, label=torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64))

    class Constant(nn.Module):
        def __init__(self, c: float) -> None:
            super().__init__()
            self.c = nn.Parameter(torch.tensor(c, dtype=torch.float64))

        def forward(self, x, theta):
            return self.c.expand(x.shape[0])

    c0 = 0.4
    out = L.alice_loss(Constant(c0), ev)
    assert out.tolist() == pytest.approx([_bce(c0, float(t)) for t in s], rel=1e-12)
    # minimiser: sigma(c*) = E[s(x, z) | x], i.e. r̂ = E[s]/(1 - E[s])
    best = Constant(math.log(s.mean() / (1 - s.mean())))
    (grad,) = torch.autograd.grad(L.alice_loss(best, ev).sum(), best.c)
    assert abs(grad.item()) < 1e-12
    off = Constant(math.log(s.mean() / (1 - s.mean())) + 0.1)
    assert L.alice_loss(off, ev).sum() > L.alice_loss(best, ev).sum()


def test_sally_nde_scandal_npe_closed_forms() -> None:
    x = torch.tensor([[-1.0], [0.3], [2.5]], dtype=torch.float64)
    theta = torch.tensor([[0.5], [-1.5], [1.0]], dtype=torch.float64)
    t = torch.tensor([[0.1], [0.2], [-0.3]], dtype=torch.float64)
    label = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    ev = Events(x=x, theta=theta, score_joint=t, label=label)
    ident = nn.Identity()
    assert torch.allclose(L.sally_loss(lambda x: ident(x), ev), ((x - t) ** 2)[:, 0])
    density = ExactGaussianDensity().double()
    log_p = -0.5 * (x[:, 0] - theta[:, 0]) ** 2 / VAR - 0.5 * math.log(2 * math.pi * VAR)
    assert torch.allclose(L.nde_loss(density, ev), -log_p * label, rtol=1e-12)
    exact_score = (x[:, 0] - theta[:, 0]) / VAR
    expected = -log_p * label + 0.5 * label * (exact_score - t[:, 0]) ** 2
    assert torch.allclose(L.scandal_loss(density, ev, alpha=0.5), expected, rtol=1e-12)
    assert torch.allclose(L.npe_loss(lambda th, xx: density(xx, th), ev), -log_p, rtol=1e-12)


def test_doubly_parameterised_score_mask() -> None:
    class Doubly(nn.Module):
        doubly = True

        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([2.0, -3.0], dtype=torch.float64))

        def forward(self, x, theta):
            return theta @ self.w  # gradient (2, -3) for every event

    theta = torch.zeros(2, 2, dtype=torch.float64)
    ev = Events(x=torch.zeros(2, 1, dtype=torch.float64), theta=theta, log_r_joint=torch.zeros(2, dtype=torch.float64),
                score_joint=torch.zeros(2, 2, dtype=torch.float64), label=torch.tensor([1.0, 0.0], dtype=torch.float64))
    term = L.alices_loss(Doubly(), ev, alpha=1.0) - L.alice_loss(Doubly(), ev)
    assert term.tolist() == pytest.approx([4.0, 9.0])  # θ0 block on label 1, θ1 block on label 0


def test_losses_of_an_ensemble_have_a_member_axis(batch: Events) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ens = Ensemble(LinearInTheta().double(), 3)
    wrong = batch.replace(score_joint=batch.score_joint + 0.3)
    for fn in (L.carl_loss, L.alice_loss, L.rolr_loss, L.alices_loss, L.rascal_loss, L.cascal_loss):
        out = fn(ens, wrong)
        assert out.shape == (3, 4)
        assert torch.allclose(out, fn(LinearInTheta().double(), wrong).expand(3, 4), atol=1e-14)


@pytest.mark.parametrize(
    "name, drop",
    [("carl", "label"), ("rolr", "log_r_joint"), ("rascal", "score_joint"), ("alice", "log_r_joint"),
     ("alices", "log_r_joint"), ("alices", "score_joint"), ("cascal", "score_joint"), ("sally", "score_joint"),
     ("scandal", "score_joint")],
)
def test_missing_augmented_fields_raise(batch: Events, name: str, drop: str) -> None:
    with pytest.raises(MissingAugmentedDataError, match=drop):
        L.get_loss(name)(LinearInTheta().double(), batch.replace(**{drop: None}))


def test_unknown_loss_name() -> None:
    with pytest.raises(ConfigError, match="alices"):
        L.get_loss("alicez")


_MODEL_OF = {"ratio": LinearInTheta, "likelihood": ExactGaussianDensity}


@pytest.mark.parametrize("name", ["carl", "rolr", "rascal", "alice", "alices", "cascal", "nde", "scandal"])
def test_registered_needs_are_exactly_what_the_loss_reads(batch: Events, name: str) -> None:
    info = L.loss_info(name)
    model = _MODEL_OF[info.estimator]().double()
    assert info.function is L.LOSSES[name] and info.augmented == bool({"log_r_joint", "score_joint"} & set(info.needs))
    for field in ("label", "log_r_joint", "score_joint"):
        reduced = batch.replace(**{field: None})
        if field in info.needs:
            with pytest.raises(MissingAugmentedDataError, match=field):
                info.function(model, reduced)
        else:  # a field the loss does not declare is not needed
            assert torch.isfinite(info.function(model, reduced)).all()


def test_loss_registry_metadata_and_options() -> None:
    assert {n: L.loss_info(n).estimator for n in L.LOSSES} == {
        "carl": "ratio", "rolr": "ratio", "rascal": "ratio", "alice": "ratio", "alices": "ratio", "cascal": "ratio",
        "sally": "score", "nde": "likelihood", "scandal": "likelihood", "npe": "posterior", "density": "density",
        "integrand_variance": "density", "disco": "classifier", "double_disco": "classifier"}
    assert L.loss_info("ALICES").options == ("alpha",) and L.loss_info("rolr").options == ("clip",)
    assert L.loss_info("sally").needs == ("score_joint",) and L.loss_info("carl").augmented is False
    with pytest.raises(ConfigError, match=r"no option\(s\) \['alpha'\]; its options are \[\]"):
        L.get_loss("carl", alpha=0.1)
    with pytest.raises(ConfigError, match="already taken"):
        L.register_loss("carl", estimator="ratio")(lambda model, batch: batch.x[:, 0])
