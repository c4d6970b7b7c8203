r"""Reweighting simulated events to any parameter point through their exact history likelihood.

For events generated at :math:`\theta_0` with latent histories z (Mrenna, Skands, arXiv:1605.08352;
Bothmann, Schönherr, Schumann, arXiv:1606.08753),

.. math:: w_i(\theta) = \frac{p(x_i, z_i|\theta)}{p(x_i, z_i|\theta_0)}
    = \exp\Big(\sum_\text{acc}\log\frac{w_\theta}{w_{\theta_0}}
      + \sum_\text{rej}\log\frac{1 - w_\theta}{1 - w_{\theta_0}}\Big),

so that :math:`E_{\theta_0}[w\,f] = E_\theta[f]` for any observable f, with
:math:`E_{\theta_0}[w] = 1`. The effective sample size :math:`(\sum w)^2/\sum w^2` says how many
unweighted events the weighted sample is worth. Works for any simulator with
``joint_log_prob`` (:class:`~sbilab.simulators.base.JointLikelihood`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...events import Events
from ...exceptions import InvalidEventsError
from ..augment import joint_log_ratio
from ..base import Simulator

__all__ = ["reweight", "effective_sample_size"]


def reweight(simulator: Simulator, events: Events, theta: Tensor) -> Events:
    r"""The events with weights :math:`w_\mathrm{old}\,p(x,z|\theta)/p(x,z|\theta_\mathrm{gen})` and ``theta`` set to θ.

    Args:
        simulator: The simulator that generated ``events`` (it evaluates their histories).
        events: Events carrying their latent history; each row's ``theta`` is its generation point.
        theta: Target point, ``(P,)`` or ``(N, P)``.

    Raises:
        MissingAugmentedDataError: the simulator has no ``joint_log_prob``.
        OverestimateError, NegativeKernelError: (shower) θ outside the region it can evaluate.
    """
    n = len(events)
    target = torch.as_tensor(theta, dtype=events.theta.dtype).reshape(-1, events.n_parameters).expand(n, -1)
    log_w = joint_log_ratio(simulator, events, target, events.theta)
    weights = events.weights_or_ones().to(torch.float64) * torch.exp(log_w.to(torch.float64))
    return events.replace(theta=target.clone(), weights=weights.to(events.theta.dtype), log_r_joint=None, score_joint=None)


def effective_sample_size(weights: Tensor) -> float:
    r"""Kish's effective sample size :math:`(\sum_i w_i)^2/\sum_i w_i^2` of ``weights (N,)``.

    Example:
        >>> effective_sample_size(torch.tensor([1.0, 1.0, 1.0, 1.0])), effective_sample_size(torch.tensor([1.0, 0.0]))
        (4.0, 1.0)
    """
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.dim() != 1 or w.numel() == 0 or bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise InvalidEventsError("effective_sample_size: weights must be a non-empty (N,) tensor of finite, non-negative values.")
    return float(w.sum() ** 2 / (w**2).sum().clamp(min=1e-300))
