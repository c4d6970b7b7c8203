r"""Every training loss of sbilab, as plain functions ``loss(model, batch) -> per-event losses``.

Protocol: a loss takes an estimator (or an :class:`~sbilab.nets.ensemble.Ensemble` of them) and
a batch of :class:`~sbilab.events.Events` and returns the per-event loss, ``(N,)`` for a plain
module and ``(K, N)`` for an ensemble of ``K`` members; :func:`sbilab.training.fit` takes the
weighted mean over events and sums over members. Options such as ``alpha`` are keyword
arguments: pass ``functools.partial(alices_loss, alpha=1.0)`` or :func:`get_loss`.

**Registry.** Each loss registers itself where it is defined with :func:`register_loss`, which
records a :class:`LossInfo`: the name used in TOML and on the command line, the kind of
estimator it trains, the :class:`~sbilab.events.Events` fields a batch must carry, and its keyword
options. Callers branch on this metadata (:func:`loss_info`), never on loss names.

Conventions (:func:`sbilab.simulators.ratio_training_data`): ``label = 1`` events were drawn
at their ``theta`` (the numerator), ``label = 0`` events at the reference
:math:`\theta_\mathrm{ref}` (the denominator) and paired with a ``theta`` from the proposal;
``log_r_joint`` is :math:`\log r(x,z|\theta) = \log p(x,z|\theta) / p(x,z|\theta_\mathrm{ref})`
and ``score_joint`` :math:`t(x,z|\theta) = \nabla_\theta \log p(x,z|\theta)`, both at the
event's ``theta``. The classifier logit is :math:`\log \hat r`.

**Score terms.** :math:`E[t(x,z|\theta)\,|\,x] = t(x|\theta)` holds only under
:math:`p(z|x,\theta)`, i.e. for events drawn *at* ``theta``: score terms are therefore masked
to ``label = 1`` events (as MadMiner does; events without a label count as drawn at ``theta``).
The network's :math:`\nabla_\theta \log \hat r(x|\theta)` is computed for the whole batch with
one reverse pass (``create_graph=True``; every output row depends only on its own
``theta`` row, so the gradient of the sum is the per-event gradient), and for an ensemble with
per-member inputs ``(K, N, P)`` — no per-event loops.

References: CARL arXiv:1506.02169; ROLR, RASCAL, CASCAL, SALLY, SALLINO arXiv:1805.00013 and
arXiv:1805.00020; ALICE, ALICES arXiv:1808.00973; SCANDAL arXiv:1805.12244.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..events import Events
from ..exceptions import ConfigError, MissingAugmentedDataError
from ..nets.ensemble import Ensemble
from .density import DENSITY_TARGETS, DensityTarget, density_target

__all__ = [
    "carl_loss",
    "rolr_loss",
    "rascal_loss",
    "alice_loss",
    "alices_loss",
    "cascal_loss",
    "sally_loss",
    "nde_loss",
    "scandal_loss",
    "npe_loss",
    "density_loss",
    "integrand_variance_loss",
    "Integrand",
    "score_term",
    "get_loss",
    "LOSSES",
    "LossInfo",
    "loss_info",
    "register_loss",
]

Need = Literal["label", "log_r_joint", "score_joint", "spectator"]
"""An :class:`~sbilab.events.Events` field that a loss reads from every batch."""
EstimatorKind = Literal["ratio", "score", "likelihood", "posterior", "density", "classifier"]
"""What a loss trains: ``"ratio"`` — ``forward(x, theta) -> log r̂`` (RatioEstimator); ``"score"`` —
``forward(x) -> t̂`` (ScoreEstimator); ``"likelihood"`` — ``forward(x, theta) -> log p̂(x|θ)``
(LikelihoodEstimator); ``"posterior"`` — ``forward(theta, x) -> log q(θ|x)`` (PosteriorEstimator)."""


@dataclass(frozen=True)
class LossInfo:
    """What a registered loss needs and what it trains (see :func:`register_loss`).

    Attributes:
        name: The loss's name at the TOML/CLI boundary (lower case), e.g. ``"alices"``.
        estimator: The kind of estimator it trains (:data:`EstimatorKind`).
        needs: The Events fields every batch must carry (``label``: drawn at θ or at the
            reference; ``log_r_joint``: the joint log-ratio; ``score_joint``: the joint score).
        options: Its keyword-only options (e.g. ``("alpha",)``), read from its signature.
        function: The loss function itself.

    Example:
        >>> info = loss_info("rascal")
        >>> info.estimator, info.needs, info.options
        ('ratio', ('label', 'log_r_joint', 'score_joint'), ('alpha', 'clip'))
    """

    name: str
    estimator: EstimatorKind
    needs: tuple[Need, ...]
    options: tuple[str, ...]
    function: Callable[..., Tensor]

    @property
    def augmented(self) -> bool:
        """Whether the loss needs the simulator's augmented data (joint log-ratio or joint score)."""
        return "log_r_joint" in self.needs or "score_joint" in self.needs


_REGISTRY: dict[str, LossInfo] = {}
LOSSES: dict[str, Callable[..., Tensor]] = {}
"""Every registered loss function by name (filled by :func:`register_loss`)."""


def register_loss(name: str, *, estimator: EstimatorKind, needs: tuple[Need, ...] = ()) -> Callable[[Callable], Callable]:
    """Decorator: register a loss function ``loss(model, batch, **options) -> per-event losses`` under ``name``.

    Its options are its keyword-only arguments. Registering a second function under a taken
    name raises :class:`ConfigError` (re-running the same definition does not).
    """

    def decorate(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        key = name.lower()
        old = _REGISTRY.get(key)
        if old is not None and (old.function.__module__, old.function.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ConfigError(f"register_loss: the name {key!r} is already taken by {old.function.__module__}.{old.function.__qualname__}.")
        options = tuple(p.name for p in inspect.signature(fn).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY)
        _REGISTRY[key] = LossInfo(key, estimator, tuple(needs), options, fn)
        LOSSES[key] = fn
        return fn

    return decorate


def loss_info(name: str) -> LossInfo:
    """The :class:`LossInfo` of the loss called ``name`` (case-insensitive).

    Raises:
        ConfigError: no loss is registered under ``name``.
    """
    try:
        return _REGISTRY[str(name).lower()]
    except KeyError:
        raise ConfigError(f"Unknown loss {name!r}; choose one of {sorted(_REGISTRY)}.") from None


_HOW: dict[Need, str] = {
    "label": "Build training data with sbilab.simulators.ratio_training_data(sim, n), which labels events "
             "1 (drawn at theta) and 0 (drawn at the reference).",
    "log_r_joint": "Attach it with sbilab.simulators.augment(sim, events) (needs the simulator's joint_log_prob), "
                   "or use a loss without augmented data (CARL, NDE).",
    "score_joint": "Attach it with sbilab.simulators.augment(sim, events) (needs the simulator's joint_log_prob), "
                   "or set alpha=0 / use a loss without a score term.",
    "spectator": "Give the events a spectator (N, S): the variable to decorrelate from (e.g. the mass), "
                 "not a classifier input; sbilab.anomaly.decorrelation_training_data builds such events.",
}


def _require(batch: Events, loss: str) -> None:
    """Raise if ``batch`` lacks a field that the registered loss ``loss`` needs."""
    for name in _REGISTRY[loss].needs:
        if getattr(batch, name) is None:
            raise MissingAugmentedDataError(f"{loss.upper()} needs Events.{name}, which this batch lacks. {_HOW[name]}")


def _check_option(loss: str, name: str, value: Any) -> None:
    """Raise :class:`ConfigError` for a value of a loss option that cannot be right (checked by :func:`get_loss` and at each call)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "alpha" and not (number and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{loss.upper()}: alpha (the weight of the score term) must be a finite number >= 0, got {value!r}; "
                          "typical values are 0.1-10, 0 switches the score term off.")
    if name == "clip" and not (number and value > 0):
        raise ConfigError(f"{loss.upper()}: clip must be a positive log-ratio bound (default 10), got {value!r}.")
    if name == "target" and value not in DENSITY_TARGETS:
        raise ConfigError(f"{loss.upper()}: target must be one of {DENSITY_TARGETS} (an Events field), got {value!r}.")


def _is_ensemble(model: nn.Module) -> bool:
    return isinstance(model, Ensemble)


def _base(model: nn.Module) -> nn.Module:
    return model.template if isinstance(model, Ensemble) else model


def _forward(model: nn.Module, batch: Events, *, theta: bool = True, grad: bool = False) -> tuple[Tensor, Tensor | None]:
    r"""The model's output and, with ``grad``, its gradient w.r.t. ``theta``.

    Returns:
        ``out``: ``(N, ...)`` or ``(K, N, ...)``; ``grad``: ``(N, P)`` or ``(K, N, P)`` (else None).
    """
    extra = (batch.mask,) if batch.mask is not None else ()
    if not theta:
        return model(batch.x, *extra), None
    if not grad:
        return model(batch.x, batch.theta, *extra), None
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        if _is_ensemble(model):
            k = model.k
            th = batch.theta.detach().unsqueeze(0).expand(k, *batch.theta.shape).clone().requires_grad_(True)
            args = [t.unsqueeze(0).expand(k, *t.shape) for t in (batch.x, *extra)]
            out = model(args[0], th, *args[1:], stacked=True)
        else:
            th = batch.theta.detach().clone().requires_grad_(True)
            out = model(batch.x, th, *extra)
        (g,) = torch.autograd.grad(out.sum(), th, create_graph=create)
    return out, g


def score_term(model: nn.Module, batch: Events, grad: Tensor) -> Tensor:
    r"""Masked squared error :math:`\sum_j w_j (\partial_{\theta_j} \log\hat r - t_j(x,z|\theta))^2`, ``(N,)`` or ``(K, N)``.

    ``grad`` is the network's :math:`\nabla_\theta` output, ``(N, Q)`` or ``(K, N, Q)``. The mask
    :math:`w` keeps the events whose joint score is an unbiased target: ``label = 1`` rows; for
    a doubly parameterised estimator (``theta = (θ0, θ1)``, ``score_joint`` holding
    :math:`(t(x,z|\theta_0), -t(x,z|\theta_1))`) the θ0 block on ``label = 1`` rows and the θ1
    block on ``label = 0`` rows.
    """
    target = batch.score_joint
    if batch.label is None:
        w = torch.ones_like(target)
    elif getattr(_base(model), "doubly", False):
        p = target.shape[1] // 2
        lab = batch.label.unsqueeze(1)
        w = torch.cat([lab.expand(-1, p), (1 - lab).expand(-1, p)], dim=1)
    else:
        w = batch.label.unsqueeze(1).expand_as(target)
    return (w * (grad - target) ** 2).sum(-1)


# ---------------------------------------------------------------------------- classifiers
@register_loss("carl", estimator="ratio", needs=("label",))
def carl_loss(model: nn.Module, batch: Events) -> Tensor:
    r"""CARL: cross-entropy of the classifier :math:`\hat s = \sigma(\log\hat r)` (arXiv:1506.02169).

    .. math:: \ell = -y \log \sigma(\log\hat r) - (1 - y) \log(1 - \sigma(\log\hat r)),

    with :math:`y` the label (1 = drawn at θ). Its minimiser is :math:`\log\hat r = \log r(x|\theta)`.
    Needs ``label``.
    """
    _require(batch, "carl")
    log_r, _ = _forward(model, batch)
    return F.binary_cross_entropy_with_logits(log_r, batch.label.expand_as(log_r), reduction="none")


@register_loss("cascal", estimator="ratio", needs=("label", "score_joint"))
def cascal_loss(model: nn.Module, batch: Events, *, alpha: float = 0.1) -> Tensor:
    r"""CASCAL = CARL + :math:`\alpha \lVert \nabla_\theta \log\hat r - t(x,z|\theta) \rVert^2` (arXiv:1805.00020).

    The score term is masked to ``label = 1`` events (see :func:`score_term`). Needs ``label``, ``score_joint``.
    """
    _require(batch, "cascal")
    _check_option("cascal", "alpha", alpha)
    log_r, grad = _forward(model, batch, grad=True)
    return F.binary_cross_entropy_with_logits(log_r, batch.label.expand_as(log_r), reduction="none") + alpha * score_term(model, batch, grad)


@register_loss("alice", estimator="ratio", needs=("log_r_joint",))
def alice_loss(model: nn.Module, batch: Events) -> Tensor:
    r"""ALICE: cross-entropy with the joint soft label (Stoye, Brehmer, Louppe, Pavez, Cranmer, arXiv:1808.00973).

    .. math:: s(x,z) = \frac{1}{1 + r(x,z|\theta)^{-1}} = \sigma(\log r(x,z|\theta)), \qquad
              \ell = -s \log\sigma(\log\hat r) - (1-s)\log(1-\sigma(\log\hat r)).

    Over the balanced sample the minimiser is :math:`\sigma(\log\hat r) = E[s(x,z)|x] = s(x)`, i.e.
    :math:`\hat r = r(x|\theta)`. The label is not used. Needs ``log_r_joint``.
    """
    _require(batch, "alice")
    log_r, _ = _forward(model, batch)
    return F.binary_cross_entropy_with_logits(log_r, torch.sigmoid(batch.log_r_joint).expand_as(log_r), reduction="none")


@register_loss("alices", estimator="ratio", needs=("log_r_joint", "score_joint"))
def alices_loss(model: nn.Module, batch: Events, *, alpha: float = 0.1) -> Tensor:
    r"""ALICES = ALICE + :math:`\alpha \lVert \nabla_\theta \log\hat r - t(x,z|\theta) \rVert^2` (arXiv:1808.00973).

    The score term is masked to ``label = 1`` events. Needs ``log_r_joint``, ``score_joint`` (and ``label``).
    """
    _require(batch, "alices")
    _check_option("alices", "alpha", alpha)
    log_r, grad = _forward(model, batch, grad=True)
    ce = F.binary_cross_entropy_with_logits(log_r, torch.sigmoid(batch.log_r_joint).expand_as(log_r), reduction="none")
    return ce + alpha * score_term(model, batch, grad)


# ---------------------------------------------------------------------------- regressions
def _rolr(log_r: Tensor, batch: Events, clip: float) -> Tensor:
    _check_option("rolr", "clip", clip)
    r_hat_log = log_r.clamp(-clip, clip)
    r_log = batch.log_r_joint.clamp(-clip, clip)
    num = (torch.exp(-r_hat_log) - torch.exp(-r_log)) ** 2  # drawn at theta: regress 1/r
    den = (torch.exp(r_hat_log) - torch.exp(r_log)) ** 2    # drawn at reference: regress r
    return torch.where(batch.label > 0.5, num, den)


@register_loss("rolr", estimator="ratio", needs=("label", "log_r_joint"))
def rolr_loss(model: nn.Module, batch: Events, *, clip: float = 10.0) -> Tensor:
    r"""ROLR: regression on the joint likelihood ratio (Brehmer, Cranmer, Louppe, Pavez, arXiv:1805.00013, 1805.00020).

    .. math:: \ell = (1-y)\,\bigl(e^{[\log\hat r]_c} - e^{[\log r(x,z|\theta)]_c}\bigr)^2
                   + y\,\bigl(e^{-[\log\hat r]_c} - e^{-[\log r(x,z|\theta)]_c}\bigr)^2,
              \qquad [u]_c = \min(\max(u, -c), c).

    Events drawn at the reference (:math:`y = 0`) regress :math:`r`, whose conditional mean under
    :math:`p(z|x,\theta_\mathrm{ref})` is :math:`r(x|\theta)`; events drawn at θ (:math:`y = 1`)
    regress :math:`1/r`, whose conditional mean under :math:`p(z|x,\theta)` is :math:`1/r(x|\theta)`.
    Both the target and the prediction are clipped in log space to ``[-clip, clip]`` (default
    ±10, as MadMiner does) before exponentiation, so a joint ratio of :math:`e^{\pm 40}` or a
    runaway network output cannot overflow the loss; inside the clip the minimiser is unchanged,
    and a clipped prediction gets no gradient.

    Note: in log space the error is weighted by :math:`\hat r^2` (:math:`y = 0`) or
    :math:`\hat r^{-2}` (:math:`y = 1`), and the per-event loss carries the whole conditional
    variance of :math:`r(x,z)` given :math:`x`; a validation loss built from it is therefore
    noisy, and picking the "best" epoch on it can select an under-trained network (see
    ``benchmarks/README.md``, "Ratio accuracy").

    Args:
        clip: Bound :math:`c > 0` on :math:`|\log r|` for targets and predictions.

    Needs ``label``, ``log_r_joint``.
    """
    _require(batch, "rolr")
    log_r, _ = _forward(model, batch)
    return _rolr(log_r, batch, clip)


@register_loss("rascal", estimator="ratio", needs=("label", "log_r_joint", "score_joint"))
def rascal_loss(model: nn.Module, batch: Events, *, alpha: float = 1.0, clip: float = 10.0) -> Tensor:
    r"""RASCAL = ROLR + :math:`\alpha \lVert \nabla_\theta \log\hat r - t(x,z|\theta) \rVert^2` (arXiv:1805.00020).

    The regression part is :func:`rolr_loss` with the same log-space ``clip``; the score term is
    masked to ``label = 1`` events. Needs ``label``, ``log_r_joint``, ``score_joint``.
    """
    _require(batch, "rascal")
    _check_option("rascal", "alpha", alpha)
    log_r, grad = _forward(model, batch, grad=True)
    return _rolr(log_r, batch, clip) + alpha * score_term(model, batch, grad)


@register_loss("sally", estimator="score", needs=("score_joint",))
def sally_loss(model: nn.Module, batch: Events) -> Tensor:
    r"""SALLY: :math:`\ell = \lVert \hat t(x) - t(x,z|\theta_\mathrm{ref}) \rVert^2` (arXiv:1805.00013, 1805.00020).

    The minimiser is :math:`\hat t(x) = E[t(x,z|\theta_\mathrm{ref})|x] = t(x|\theta_\mathrm{ref})`
    only if the events were drawn at the reference point and carry the joint score there, as
    :func:`sbilab.simulators.augment.score_training_data` produces. Needs ``score_joint``.
    """
    _require(batch, "sally")
    t_hat, _ = _forward(model, batch, theta=False)
    return ((t_hat - batch.score_joint) ** 2).sum(-1)


# ---------------------------------------------------------------------------- densities
def _label_mask(batch: Events, like: Tensor) -> Tensor:
    return torch.ones_like(like) if batch.label is None else batch.label.expand_as(like)


@register_loss("nde", estimator="likelihood")
def nde_loss(model: nn.Module, batch: Events) -> Tensor:
    r"""NDE: negative log-likelihood :math:`\ell = -\log\hat p(x|\theta)` of a conditional density estimator.

    Only events drawn at their ``theta`` are valid samples of :math:`p(x|\theta)`: rows with
    ``label = 0`` (drawn at the reference, paired with another θ) get zero loss.
    """
    log_p, _ = _forward(model, batch)
    return -log_p * _label_mask(batch, log_p)


@register_loss("scandal", estimator="likelihood", needs=("score_joint",))
def scandal_loss(model: nn.Module, batch: Events, *, alpha: float = 0.1) -> Tensor:
    r"""SCANDAL = NDE + :math:`\alpha \lVert \nabla_\theta \log\hat p(x|\theta) - t(x,z|\theta) \rVert^2` (arXiv:1805.12244).

    The gradient runs through the flow's conditioning on θ. Rows with ``label = 0`` are masked
    in both terms. Needs ``score_joint``.
    """
    _require(batch, "scandal")
    _check_option("scandal", "alpha", alpha)
    log_p, grad = _forward(model, batch, grad=True)
    return -log_p * _label_mask(batch, log_p) + alpha * score_term(model, batch, grad)


@register_loss("npe", estimator="posterior")
def npe_loss(model: nn.Module, batch: Events) -> Tensor:
    r"""NPE: :math:`\ell = -\log q(\theta|x)` of a posterior estimator called as ``model(theta, x)`` (arXiv:1905.07488)."""
    extra = (batch.mask,) if batch.mask is not None else ()
    return -model(batch.theta, batch.x, *extra)


@register_loss("density", estimator="density")
def density_loss(model: nn.Module, batch: Events, *, target: DensityTarget = "theta") -> Tensor:
    r"""Conditional density: :math:`\ell = -\log q(y|x)` of a :class:`~sbilab.estimators.density.ConditionalDensity`.

    The context is the batch's ``x`` (with its ``mask`` for sets); the target ``y`` is the field
    named by ``target``: ``"theta"`` (posterior estimation; the same as :func:`npe_loss`),
    ``"latent"`` (e.g. generator level given detector level, parton level given reco) or
    ``"spectator"``. Bind it with ``get_loss("density", target="latent")``.

    Raises:
        ConfigError: ``target`` is not an Events field a density can model.
        MissingAugmentedDataError: the batch lacks the ``target`` field.
    """
    y = density_target(batch, target, owner="density_loss")
    extra = (batch.mask,) if batch.mask is not None else ()
    return -model(y, batch.x, *extra)


Integrand = Callable[[Tensor, Tensor, Tensor], Tensor]
r"""``integrand(y: (B, S, D), x: (B, C), theta: (B, P)) -> (B, S)``: :math:`\log g(y; x, \theta)`, float64 inputs."""


@register_loss("integrand_variance", estimator="density")
def integrand_variance_loss(model: nn.Module, batch: Events, *, integrand: Integrand, samples: int = 64) -> Tensor:
    r"""Variance of importance sampling: train a :class:`~sbilab.estimators.density.ConditionalDensity` :math:`q(y|x)` as the sampler of :math:`\int g(y; x, \theta)\,dy`.

    For each event of the batch (context ``x``, parameters ``theta``), ``samples`` points
    :math:`y_j \sim q(\cdot|x)` are drawn (torch's global generator, which ``fit`` seeds) with
    weights :math:`w_j = g(y_j)/q(y_j|x)`. The per-event loss is the relative variance of one
    weight, the scale-free variance loss of MadNIS (arXiv:2212.06172, eq. 12; arXiv:2311.01548):

    .. math::
        \ell = \frac{\mathbb E_q[w^2]}{I^2} - 1 \approx \frac1S\sum_j \hat w_j^2 - 1,
        \qquad \hat w_j = \frac{w_j}{\tfrac1S\sum_k w_k},

    whose value is :math:`S/\mathrm{ESS} - 1`, i.e. the integrand calls needed for 1 %
    precision divided by :math:`10^4`. Its gradient in the flow's parameters φ,
    :math:`\nabla_\phi \mathbb E_q[w^2] = -\mathbb E_q[w^2 \nabla_\phi\log q_\phi]`, is taken with
    the draws held fixed (:math:`g^2/(q_\phi\, \bar q)` with :math:`\bar q` the detached density):
    only :math:`\log q_\phi` is differentiated, so ``integrand`` needs no gradient and may be
    any black box (cuts, permutation sums). An event whose ``samples`` draws all miss the
    integrand (:math:`g = 0`) has no defined variance and contributes zero; start from a
    sampler that covers the integrand (e.g. one trained by maximum likelihood on simulation,
    :func:`density_loss`).

    Args:
        model: A :class:`~sbilab.estimators.density.ConditionalDensity` over ``y`` given ``x``
            (an ensemble is refused: train members one by one).
        batch: Events with ``x`` (the contexts) and ``theta`` (the integrand's parameters).
        integrand: :data:`Integrand`, e.g. the matrix element's log integrand in the sampler's
            coordinates (:meth:`sbilab.mem.FlowProposal.integrand`). Bind it with
            ``get_loss("integrand_variance", integrand=..., samples=...)``.
        samples: Draws per event per step.

    Raises:
        ConfigError: an ensemble, or ``samples < 2``.
    """
    if _is_ensemble(model) or not hasattr(model, "sample"):
        raise ConfigError("integrand_variance_loss: model must be one ConditionalDensity (not an ensemble).")
    if isinstance(samples, bool) or int(samples) < 2:
        raise ConfigError(f"integrand_variance_loss: samples must be an integer >= 2, got {samples!r}.")
    extra = {"mask": batch.mask} if batch.mask is not None else {}
    y = model.sample(int(samples), batch.x, **extra)  # (S, B, D), no graph
    log_q = model(y, batch.x, *extra.values())  # (S, B), differentiable in the parameters
    with torch.no_grad():
        log_g = integrand(y.transpose(0, 1).to(torch.float64), batch.x.to(torch.float64), batch.theta.to(torch.float64))
        log_w = log_g.transpose(0, 1) - log_q.detach().to(torch.float64)  # (S, B)
        log_mean = torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(samples), dtype=torch.float64))
        covered = torch.isfinite(log_mean)
        log_w2 = torch.where(covered, 2 * (log_w - log_mean), torch.full_like(log_w, -torch.inf)).to(log_q.dtype)
    per_event = torch.exp(log_w2 + log_q.detach() - log_q).mean(0) - 1  # value: mean normalised w² - 1
    return torch.where(covered, per_event, torch.zeros_like(per_event))


def get_loss(name: str, **options: Any) -> Callable[[nn.Module, Events], Tensor]:
    """The loss called ``name`` (case-insensitive) with keyword ``options`` bound, e.g. ``get_loss("alices", alpha=1.0)``.

    Raises:
        ConfigError: unknown name, an option the loss does not take, or an option value that cannot be
            right (``alpha < 0`` or not finite, ``clip <= 0``).

    Example:
        >>> get_loss("ALICES", alpha=0.5).keywords
        {'alpha': 0.5}
    """
    info = loss_info(name)
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise ConfigError(f"get_loss: the {info.name!r} loss has no option(s) {unknown}; its options are {list(info.options)}.")
    for key, value in options.items():
        _check_option(info.name, key, value)
    return functools.partial(info.function, **options)
