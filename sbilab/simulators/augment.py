r"""Augmented data: joint log-ratios and joint scores from a simulator's joint likelihood.

For a simulator with latent path z,

.. math::
    \log r(x, z | \theta_0, \theta_1) = \log p(x, z | \theta_0) - \log p(x, z | \theta_1),
    \qquad t(x, z | \theta) = \nabla_\theta \log p(x, z | \theta).

Their conditional expectations given x are the intractable likelihood ratio and score
(Brehmer, Louppe, Pavez, Cranmer, arXiv:1805.12244), which is why regressing on them
works. The score is computed by autograd, batched over events.

Every function that makes augmented data checks it by default (``check="raise"``): the joint
score must have mean zero and the joint ratio mean one (:mod:`sbilab.simulators.checks`), which
a ``joint_log_prob`` missing a θ-dependent normalisation (an acceptance) violates. The checks
cost a few sums over the events; ``check="warn"`` turns a failure into a warning and
``check="off"`` skips them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import MissingAugmentedDataError
from .base import Simulator, has_joint_likelihood
from .checks import CheckMode, check_augmented, enforce, joint_ratio_check, joint_score_check

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


def _check(simulator: Simulator, events: Events, check: CheckMode, where: str) -> Events:
    """Run the identity checks of :mod:`sbilab.simulators.checks` on augmented ``events`` unless ``check="off"``."""
    if check != "off":
        enforce(check_augmented(events, simulator.space.names), check, where=f"{where}({simulator.name})")
    return events


def augment(simulator: Simulator, events: Events, *, reference: Tensor | None = None, check: CheckMode = "raise") -> Events:
    r"""Attach ``log_r_joint`` (against ``reference``) and ``score_joint`` (at each event's θ).

    Args:
        simulator: A simulator with ``joint_log_prob``.
        events: Events with the latent path; rows with ``label = 0`` were drawn at the reference,
            all others at their own ``theta`` (as :meth:`~sbilab.simulators.base.Simulator.simulate` returns them).
        reference: Reference point, ``(P,)``; default the simulator's ``space.reference``.
        check: Test the joint score's mean zero and the joint ratio's mean one
            (:func:`~sbilab.simulators.checks.check_augmented`): ``"raise"``, ``"warn"`` or ``"off"``.

    Raises:
        IdentityCheckError: with ``check="raise"``, the augmented data violate an identity
            (the message gives the mean, its error and pull, and the likely cause).
    """
    enforce((), check, where="augment")  # an unknown mode fails before any work
    ref = simulator.space.reference if reference is None else torch.as_tensor(reference)
    log_r = joint_log_ratio(simulator, events, events.theta, ref)
    score = joint_score(simulator, events)
    out = events.replace(log_r_joint=log_r.to(events.theta.dtype), score_joint=score.to(events.theta.dtype))
    return _check(simulator, out, check, "augment")


def ratio_training_data(
    simulator: Simulator,
    n: int,
    *,
    generator: torch.Generator | None = None,
    reference: Tensor | None = None,
    augmented: bool = True,
    check: CheckMode = "raise",
) -> Events:
    r"""The balanced training set of parameterised ratio estimators.

    ``n`` events are drawn at points :math:`\theta_i` from the proposal (``label = 1``) and
    ``n`` at the reference point (``label = 0``), each of the latter paired with its own
    proposal point :math:`\theta'_i` as the hypothesis the classifier is conditioned on. A
    classifier trained on this set learns :math:`\hat s = \sigma(\log \hat r)` with
    :math:`r(x|\theta) = p(x|\theta)/p(x|\theta_\mathrm{ref})` (arXiv:1506.02169). With
    ``augmented=True`` every event also carries the joint log-ratio against the reference
    at its ``theta`` and the joint score there (arXiv:1805.12244), checked by
    :func:`~sbilab.simulators.checks.check_augmented` unless ``check="off"`` (the joint score
    on the events drawn at θ, the joint ratio on both halves, each within groups of θ).

    Returns:
        Events of length ``2 n`` with ``label``; interleaving is random.

    Raises:
        IdentityCheckError: with ``check="raise"``, the augmented data violate an identity.
    """
    enforce((), check, where="ratio_training_data")
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
        num = augment(simulator, num, reference=ref, check="off")
        den = augment(simulator, den, reference=ref, check="off")
    both = Events.concatenate([num, den])
    if augmented:
        _check(simulator, both, check, "ratio_training_data")
    perm = torch.randperm(2 * n, generator=generator)
    return both[perm]


def score_training_data(
    simulator: Simulator,
    n: int,
    *,
    generator: torch.Generator | None = None,
    reference: Tensor | None = None,
    check: CheckMode = "raise",
) -> Events:
    r"""Training data of local score estimators (SALLY, SALLINO; arXiv:1805.00013).

    ``n`` events drawn *at* the reference point, each with ``theta`` = the reference, ``label = 1``
    and the joint score :math:`t(x,z|\theta_\mathrm{ref})` there (and ``log_r_joint = 0``). Only for
    events drawn at the point where the joint score is evaluated is
    :math:`E[t(x,z|\theta_\mathrm{ref})|x] = t(x|\theta_\mathrm{ref})`. ``check`` as in :func:`augment`.

    Returns:
        Events of length ``n``.
    """
    enforce((), check, where="score_training_data")
    ref = simulator.space.reference if reference is None else torch.as_tensor(reference, dtype=torch.float64)
    theta = ref.to(torch.get_default_dtype()).expand(n, -1).clone()
    events = simulator.sample(theta, generator=generator)
    events = events.replace(label=torch.ones(n, dtype=theta.dtype))
    return _check(simulator, augment(simulator, events, reference=ref, check="off"), check, "score_training_data")


def doubly_ratio_training_data(
    simulator: Simulator,
    n: int,
    *,
    generator: torch.Generator | None = None,
    check: CheckMode = "raise",
) -> Events:
    r"""Training data of doubly parameterised ratio estimators :math:`\log\hat r(x|\theta_0,\theta_1)`.

    ``n`` events drawn at :math:`\theta_0` (``label = 1``) and ``n`` at :math:`\theta_1`
    (``label = 0``), with :math:`\theta_0, \theta_1` independent draws from the proposal for each
    pair. ``theta`` is ``(2n, 2P)`` = ``[θ0, θ1]``, ``log_r_joint`` is
    :math:`\log p(x,z|\theta_0) - \log p(x,z|\theta_1)` and ``score_joint`` ``(2n, 2P)`` is its gradient
    :math:`(t(x,z|\theta_0), -t(x,z|\theta_1))`.

    With ``check`` (as in :func:`augment`): events drawn at :math:`\theta_0` must have
    :math:`E[t(x,z|\theta_0)] = 0` and :math:`E[1/r] = 1`, those at :math:`\theta_1`
    :math:`E[t(x,z|\theta_1)] = 0` and :math:`E[r] = 1` (:math:`\theta_1` plays the reference).
    """
    enforce((), check, where="doubly_ratio_training_data")
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
    if check != "off":
        p = space.dim
        at_0 = both.label > 0.5  # drawn at theta0
        drawn = torch.where(at_0.unsqueeze(1), both.theta[:, :p], both.theta[:, p:])
        score = torch.where(at_0.unsqueeze(1), both.score_joint[:, :p], -both.score_joint[:, p:])
        names = [f"{name}_{k}" for k in (0, 1) for name in space.names]
        enforce((joint_score_check(score, drawn, names=space.names),
                 joint_ratio_check(both.log_r_joint, both.theta, at_reference=~at_0, names=names)),
                check, where=f"doubly_ratio_training_data({simulator.name})")
    return both[torch.randperm(2 * n, generator=generator)]
