r"""Ensembles of estimators as estimators: one reduced output, and the members' mean and spread.

An :class:`~sbilab.nets.ensemble.Ensemble` returns its members' outputs stacked, ``(K, N)`` for
:math:`\log\hat r` or :math:`\log\hat p`, ``(K, N, P)`` for :math:`\hat t` (deep ensembles,
Lakshminarayanan, Pritzel, Blundell, arXiv:1612.01474). :class:`EnsembleMean` is the ensemble
used *as one estimator*: same call as its template, one output, publishable. What "mean" means
depends on what the template returns, and each estimator class says so in its
``ensemble_reduction`` attribute (:data:`Reduction`):

``"mean"`` — the arithmetic mean of the outputs, for log-ratios, logits and scores:
    :math:`\log\bar r = \frac1K\sum_k \log\hat r_k` (the geometric mean of the ratios), and
    :math:`\bar t = \frac1K\sum_k \hat t_k`. Why not :math:`\log\frac1K\sum_k \hat r_k`: the
    reference point of a ratio is a convention, and only the mean of logs is unchanged by
    swapping numerator and denominator (:math:`\bar r(\theta_1,\theta_0) = 1/\bar r(\theta_0,\theta_1)`;
    the arithmetic mean of :math:`\hat r` and that of :math:`1/\hat r` disagree); the members'
    errors are roughly symmetric in :math:`\log\hat r` (it is what the losses fit), so averaging
    there cancels them without the bias :math:`e^{\sigma^2/2}` that the arithmetic mean of
    :math:`\hat r` picks up where members disagree (far from the reference); the ensemble's
    :math:`\nabla_\theta\log\bar r` is the mean of the members' scores, consistent with a
    SALLY ensemble's :math:`\bar t`; and a likelihood built from :math:`\log\bar r` is the
    mean of the members' likelihoods in :math:`\log L`.
``"mixture"`` — the log of the mean density, for normalised densities :math:`\log\hat p`
    (likelihood and posterior flows): :math:`\log\bar p = \log\frac1K\sum_k \hat p_k`, the
    equal-weight mixture. It is normalised (the geometric mean of densities is not: by the
    AM–GM inequality it integrates to less than one, by an amount that varies with θ), so it can
    be sampled and used in extended likelihoods; :class:`~sbilab.estimators.PosteriorMixture`
    is the same reduction with sampling for posteriors. A likelihood ensemble's log-ratio is
    then :math:`\log\bar p(x|\theta) - \log\bar p(x|\theta_\mathrm{ref})`.

The helpers :func:`ensemble_log_ratio`, :func:`ensemble_log_prob` and :func:`ensemble_score`
validate the inputs like the single estimator's public methods (shapes, θ inside the trained
space, finite outputs) and return the mean *and spread* over the members' own outputs (the
spread is the ensemble's estimate of its epistemic uncertainty).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..exceptions import ConfigError
from ..nets.ensemble import Ensemble
from ..registry import register_publishable
from .checks import check_finite, check_theta

__all__ = ["EnsembleMean", "Reduction", "ensemble_log_ratio", "ensemble_score", "ensemble_log_prob", "member_spread"]

Reduction = Literal["mean", "mixture"]
"""How :class:`EnsembleMean` reduces its members: ``"mean"`` of the outputs, or ``"mixture"``: the log of the mean of exp(output)."""
_REDUCTIONS = ("mean", "mixture")


@register_publishable
class EnsembleMean(nn.Module):
    r"""An ensemble used as one estimator: the template's call, the members reduced to one output.

    ``EnsembleMean(ens)(*args)`` takes the arguments of the template's ``forward`` and returns its
    output shape (``(N,)`` for :math:`\log\hat r`, ``(N, P)`` for :math:`\hat t`), reduced over
    the ``K`` members as the template's class declares in ``ensemble_reduction`` (``"mean"``
    when it declares nothing; see the module docs for why ratios and scores are averaged and
    densities mixed).

    Args:
        ensemble: An :class:`~sbilab.nets.ensemble.Ensemble` (e.g. ``ens = Ensemble(estimator, K)`` after ``fit(ens, ...)``).

    Raises:
        ConfigError: ``ensemble`` is not an Ensemble, or its template declares an unknown reduction.

    Example:
        >>> from sbilab.simulators import ParameterSpace
        >>> from sbilab.estimators import RatioEstimator
        >>> space = ParameterSpace(("a",), low=(0.0,), high=(1.0,))
        >>> ens = Ensemble(RatioEstimator(space, 2, hidden=(8,)), 3, generator=torch.Generator().manual_seed(0))
        >>> mean = EnsembleMean(ens)
        >>> x, theta = torch.zeros(4, 2), torch.full((4, 1), 0.5)
        >>> mean.reduction, mean(x, theta).shape
        ('mean', torch.Size([4]))
        >>> bool(torch.allclose(mean(x, theta), ens(x, theta).mean(0)))
        True
    """

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__()
        if not isinstance(ensemble, Ensemble):
            raise ConfigError(f"EnsembleMean: ensemble must be an Ensemble (ens = Ensemble(estimator, K), trained by fit(ens, ...)), got {type(ensemble).__name__}.")
        reduction = getattr(ensemble.template, "ensemble_reduction", "mean")
        if reduction not in _REDUCTIONS:
            raise ConfigError(f"EnsembleMean: {type(ensemble.template).__name__}.ensemble_reduction = {reduction!r}; "
                              f"it must be one of {_REDUCTIONS}.")
        self.ensemble = ensemble
        self.reduction: Reduction = reduction

    @classmethod
    def of(cls, model: nn.Module) -> nn.Module:
        """``EnsembleMean(model)`` for an Ensemble, ``model`` itself for a single estimator: one call for either."""
        return cls(model) if isinstance(model, Ensemble) else model

    @property
    def template(self) -> nn.Module:
        """The members' network (its class and buffers describe every member)."""
        return self.ensemble.template

    @property
    def k(self) -> int:
        """Number of members."""
        return int(self.ensemble.k)

    def members(self, *args: Any, **kwargs: Any) -> Tensor:
        """The members' outputs, stacked on a leading ``K`` axis (the Ensemble's own call)."""
        return self.ensemble(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """The template's output reduced over the members: ``(K, ...) -> (...)``."""
        out = self.ensemble(*args, **kwargs)
        if self.reduction == "mixture":
            return torch.logsumexp(out, 0) - math.log(self.k)
        return out.mean(0)

    # ------------------------------------------------------------------ publishing
    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments: the ensemble's spec (its template's kind and spec, and K)."""
        return {"ensemble": self.ensemble.spec()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "EnsembleMean":
        """Rebuild an (untrained) reduction from :meth:`spec`."""
        try:
            return cls(Ensemble.from_spec(spec["ensemble"]))
        except (KeyError, TypeError) as err:
            raise ConfigError(f"EnsembleMean.from_spec: malformed spec ({err}).") from None

    def extra_repr(self) -> str:
        return f"members={self.k}, reduction={self.reduction!r}, template={type(self.template).__name__}"


def member_spread(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation over the leading member axis of ``values (K, ...)`` (std 0 for K = 1)."""
    if values.shape[0] == 1:
        return values[0], torch.zeros_like(values[0])
    return values.mean(0), values.std(0)


def _template_of(ensemble: nn.Module) -> nn.Module:
    if not isinstance(ensemble, Ensemble):
        raise ConfigError(f"expected an Ensemble (ens = Ensemble(estimator, K), trained by fit(ens, ...)), got {type(ensemble).__name__}.")
    return ensemble.template


def ensemble_log_ratio(ensemble: nn.Module, x: Any, theta: Any, *, mask: Any = None) -> tuple[Tensor, Tensor]:
    r"""Mean and spread of :math:`\log\hat r(x|\theta)` over an ensemble of RatioEstimators (or LikelihoodEstimators).

    Args:
        x: ``(N, D)`` (or ``(N, M, F)`` with ``mask``); theta: ``(P,)`` or ``(N, P)``.

    Returns:
        ``(mean (N,), std (N,))``.
    """
    est = _template_of(ensemble)
    x, extra = est._x(x, mask)
    theta = check_theta(theta, x.shape[0], est.space, like=est.theta_ref)
    ref = est.theta_ref.expand_as(theta)
    if getattr(est, "doubly", False):
        values = ensemble(x, torch.cat([theta, ref], dim=1), *extra)
    elif hasattr(est, "flow"):
        values = ensemble(x, theta) - ensemble(x, ref)
    else:
        values = ensemble(x, theta, *extra)
    return member_spread(check_finite(values.transpose(0, 1), what="ensemble_log_ratio").transpose(0, 1))


def ensemble_log_prob(ensemble: nn.Module, x: Any, theta: Any) -> tuple[Tensor, Tensor]:
    r"""Mean and spread of :math:`\log\hat p(x|\theta)` over an ensemble of LikelihoodEstimators, ``(N,)`` each."""
    est = _template_of(ensemble)
    x, _ = est._x(x)
    theta = check_theta(theta, x.shape[0], est.space, like=est.theta_ref)
    return member_spread(check_finite(ensemble(x, theta).transpose(0, 1), what="ensemble_log_prob").transpose(0, 1))


def ensemble_score(ensemble: nn.Module, x: Any, *, mask: Any = None) -> tuple[Tensor, Tensor]:
    r"""Mean and spread of :math:`\hat t(x)` over an ensemble of ScoreEstimators, ``(N, P)`` each."""
    est = _template_of(ensemble)
    x, extra = est._x(x, mask)
    values = ensemble(x, *extra)
    return member_spread(check_finite(values.transpose(0, 1), what="ensemble_score").transpose(0, 1))
