r"""Mean and spread over the members of an ensemble of estimators (deep ensembles, arXiv:1612.01474).

An :class:`~sbilab.nets.ensemble.Ensemble` returns its members' outputs stacked, ``(K, N)`` for
:math:`\log\hat r` or :math:`\log\hat p`, ``(K, N, P)`` for :math:`\hat t`. These helpers validate
the inputs like the single estimator's public methods (shapes, θ inside the trained space, finite
outputs) and reduce over the members.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..exceptions import ConfigError
from .checks import check_finite, check_theta

__all__ = ["ensemble_log_ratio", "ensemble_score", "ensemble_log_prob", "member_spread"]


def member_spread(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation over the leading member axis of ``values (K, ...)`` (std 0 for K = 1)."""
    if values.shape[0] == 1:
        return values[0], torch.zeros_like(values[0])
    return values.mean(0), values.std(0)


def _template(ensemble: nn.Module) -> nn.Module:
    template = getattr(ensemble, "_template", None)
    if template is None or not hasattr(ensemble, "k"):
        raise ConfigError(f"expected an Ensemble (fit(..., ensemble=K).model), got {type(ensemble).__name__}.")
    return template


def ensemble_log_ratio(ensemble: nn.Module, x: Any, theta: Any, *, mask: Any = None) -> tuple[Tensor, Tensor]:
    r"""Mean and spread of :math:`\log\hat r(x|\theta)` over an ensemble of RatioEstimators (or LikelihoodEstimators).

    Args:
        x: ``(N, D)`` (or ``(N, M, F)`` with ``mask``); theta: ``(P,)`` or ``(N, P)``.

    Returns:
        ``(mean (N,), std (N,))``.
    """
    est = _template(ensemble)
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
    est = _template(ensemble)
    x, _ = est._x(x)
    theta = check_theta(theta, x.shape[0], est.space, like=est.theta_ref)
    return member_spread(check_finite(ensemble(x, theta).transpose(0, 1), what="ensemble_log_prob").transpose(0, 1))


def ensemble_score(ensemble: nn.Module, x: Any, *, mask: Any = None) -> tuple[Tensor, Tensor]:
    r"""Mean and spread of :math:`\hat t(x)` over an ensemble of ScoreEstimators, ``(N, P)`` each."""
    est = _template(ensemble)
    x, extra = est._x(x, mask)
    values = ensemble(x, *extra)
    return member_spread(check_finite(values.transpose(0, 1), what="ensemble_score").transpose(0, 1))
