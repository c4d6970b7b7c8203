r"""Augmented data: joint log-ratios and joint scores from a simulator's joint likelihood.

For a simulator with latent path z,

.. math::
    \log r(x, z | \theta_0, \theta_1) = \log p(x, z | \theta_0) - \log p(x, z | \theta_1),
    \qquad t(x, z | \theta) = \nabla_\theta \log p(x, z | \theta).

Their conditional expectations given x are the intractable likelihood ratio and score
(Brehmer, Louppe, Pavez, Cranmer, arXiv:1805.12244), which is why regressing on them
works. The score is computed by autograd, batched over events.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import MissingAugmentedDataError
from .base import Simulator, has_joint_likelihood

__all__ = ["joint_log_ratio", "joint_score", "augment", "ratio_training_data", "score_training_data", "doubly_ratio_training_data"]


def _require_joint(simulator: object) -> None:
    if not has_joint_likelihood(simulator):
        raise MissingAugmentedDataError(
            f"{type(simulator).__name__} has no joint_log_prob(events, theta); augmented data (joint ratio and "
            "score) need it. Implement it, or train with CARL/NDE, which need no augmented data."
        )


def _rows(theta: Tensor, n: int, like: Tensor) -> Tensor:
    theta = torch.as_tensor(theta, dtype=like.dtype, device=like.device)
    return theta.expand(n, -1) if theta.dim() == 1 else theta


def joint_log_ratio(simulator: Simulator, events: Events, theta0: Tensor, theta1: Tensor) -> Tensor:
    r"""Joint log-ratio :math:`\log p(x,z|\theta_0) - \log p(x,z|\theta_1)`, ``(N,)``.

    Args:
        events: Events carrying the latent path the simulator needs.
        theta0: Numerator point, ``(P,)`` or ``(N, P)``.
        theta1: Denominator point, ``(P,)`` or ``(N, P)``.
    """
    _require_joint(simulator)
    n = len(events)
    like = events.theta if events.theta.numel() else events.x
    with torch.no_grad():
        return simulator.joint_log_prob(events, _rows(theta0, n, like)) - simulator.joint_log_prob(events, _rows(theta1, n, like))


def joint_score(simulator: Simulator, events: Events, theta: Tensor | None = None) -> Tensor:
    r"""Joint score :math:`\nabla_\theta \log p(x,z|\theta)`, ``(N, P)``, by batched autograd.

    Args:
        theta: Point of evaluation, ``(P,)`` or ``(N, P)``; default: each event's own ``theta``.
    """
    _require_joint(simulator)
    n = len(events)
    point = events.theta if theta is None else _rows(theta, n, events.theta)
    with torch.enable_grad():
        point = point.detach().clone().requires_grad_(True)
        log_p = simulator.joint_log_prob(events, point)
        (grad,) = torch.autograd.grad(log_p.sum(), point)
    return grad.detach()


def augment(simulator: Simulator, events: Events, *, reference: Tensor | None = None) -> Events:
    r"""Attach ``log_r_joint`` (against ``reference``) and ``score_joint`` (at each event's θ).

    ``reference`` defaults to the simulator's ``space.reference``.
    """
    ref = simulator.space.reference if reference is None else torch.as_tensor(reference)
    log_r = joint_log_ratio(simulator, events, events.theta, ref)
    score = joint_score(simulator, events)
    return events.replace(log_r_joint=log_r.to(events.theta.dtype), score_joint=score.to(events.theta.dtype))


def ratio_training_data(
    simulator: Simulator,
    n: int,
    *,
    generator: torch.Generator | None = None,
    reference: Tensor | None = None,
    augmented: bool = True,
) -> Events:
    r"""The balanced training set of parameterised ratio estimators.

    ``n`` events are drawn at points :math:`\theta_i` from the proposal (``label = 1``) and
    ``n`` at the reference point (``label = 0``), each of the latter paired with its own
    proposal point :math:`\theta'_i` as the hypothesis the classifier is conditioned on. A
    classifier trained on this set learns :math:`\hat s = \sigma(\log \hat r)` with
    :math:`r(x|\theta) = p(x|\theta)/p(x|\theta_\mathrm{ref})` (arXiv:1506.02169). With
    ``augmented=True`` every event also carries the joint log-ratio against the reference
    at its ``theta`` and the joint score there (arXiv:1805.12244).

    Returns:
        Events of length ``2 n`` with ``label``; interleaving is random.
    """
    space = simulator.space
    ref = space.reference if reference is None else torch.as_tensor(reference, dtype=torch.float64)
    theta_num = space.sample(n, generator=generator)
    theta_alt = space.sample(n, generator=generator)
    num = simulator.sample(theta_num, generator=generator)
    den = simulator.sample(ref.to(theta_num.dtype).expand(n, -1).clone(), generator=generator)
    den = den.replace(theta=theta_alt)
    num = num.replace(label=torch.ones(n, dtype=theta_num.dtype))
    den = den.replace(label=torch.zeros(n, dtype=theta_num.dtype))
    if augmented:
        num = augment(simulator, num, reference=ref)
        den = augment(simulator, den, reference=ref)
    both = Events.concatenate([num, den])
    perm = torch.randperm(2 * n, generator=generator)
    return both[perm]


def score_training_data(
    simulator: Simulator,
    n: int,
    *,
    generator: torch.Generator | None = None,
    reference: Tensor | None = None,
) -> Events:
    r"""Training data of local score estimators (SALLY, SALLINO; arXiv:1805.00013).

    ``n`` events drawn *at* the reference point, each with ``theta`` = the reference, ``label = 1``
    and the joint score :math:`t(x,z|\theta_\mathrm{ref})` there (and ``log_r_joint = 0``). Only for
    events drawn at the point where the joint score is evaluated is
    :math:`E[t(x,z|\theta_\mathrm{ref})|x] = t(x|\theta_\mathrm{ref})`.

    Returns:
        Events of length ``n``.
    """
    ref = simulator.space.reference if reference is None else torch.as_tensor(reference, dtype=torch.float64)
    theta = ref.to(torch.get_default_dtype()).expand(n, -1).clone()
    events = simulator.sample(theta, generator=generator)
    events = events.replace(label=torch.ones(n, dtype=theta.dtype))
    return augment(simulator, events, reference=ref)


def doubly_ratio_training_data(
    simulator: Simulator,
    n: int,
    *,
    generator: torch.Generator | None = None,
) -> Events:
    r"""Training data of doubly parameterised ratio estimators :math:`\log\hat r(x|\theta_0,\theta_1)`.

    ``n`` events drawn at :math:`\theta_0` (``label = 1``) and ``n`` at :math:`\theta_1`
    (``label = 0``), with :math:`\theta_0, \theta_1` independent draws from the proposal for each
    pair. ``theta`` is ``(2n, 2P)`` = ``[θ0, θ1]``, ``log_r_joint`` is
    :math:`\log p(x,z|\theta_0) - \log p(x,z|\theta_1)` and ``score_joint`` ``(2n, 2P)`` is its gradient
    :math:`(t(x,z|\theta_0), -t(x,z|\theta_1))`.
    """
    space = simulator.space
    theta0 = space.sample(n, generator=generator)
    theta1 = space.sample(n, generator=generator)
    parts = []
    for theta_draw, label in ((theta0, 1.0), (theta1, 0.0)):
        ev = simulator.sample(theta_draw, generator=generator)
        log_r = joint_log_ratio(simulator, ev, theta0, theta1)
        score = torch.cat([joint_score(simulator, ev, theta0), -joint_score(simulator, ev, theta1)], dim=1)
        dtype = theta0.dtype
        parts.append(Events(x=ev.x, theta=torch.cat([theta0, theta1], dim=1), log_r_joint=log_r.to(dtype),
                            score_joint=score.to(dtype), label=torch.full((n,), label, dtype=dtype), latent=ev.latent,
                            mask=ev.mask, latent_mask=ev.latent_mask, spectator=ev.spectator))
    both = Events.concatenate(parts)
    return both[torch.randperm(2 * n, generator=generator)]
