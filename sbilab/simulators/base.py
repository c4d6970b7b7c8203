r"""The simulator protocol.

A simulator draws one event per row of ``theta``. Simulators whose latent path z
(parton-level kinematics, shower history, ...) can be evaluated implement
:meth:`Simulator.joint_log_prob`, from which :mod:`sbilab.simulators.augment` derives the joint
log-ratio and the joint score. Toys also know their marginal likelihood
(:meth:`ExactSimulator.log_prob`), used only to validate and benchmark learned estimators.
"""

from __future__ import annotations

import abc
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import MissingAugmentedDataError, SamplingError
from .space import ParameterSpace

__all__ = ["Simulator", "JointLikelihood", "ExactLikelihood", "has_joint_likelihood", "has_exact_likelihood", "autograd_score",
           "checked_sample", "checked_joint_log_prob"]


class Simulator(abc.ABC):
    """Base class of forward simulators.

    Subclasses set :attr:`space` and :attr:`observable_names` and implement :meth:`sample`.

    Attributes:
        space: The parameter space the simulator accepts.
        observable_names: Names of the ``D`` columns of ``x``.
    """

    space: ParameterSpace
    observable_names: tuple[str, ...]

    @property
    def name(self) -> str:
        return type(self).__name__

    @abc.abstractmethod
    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Events:
        """Draw one event per row of ``theta (N, P)``; returns Events with ``x``, ``theta`` (and ``latent``)."""

    def simulate(self, n: int, *, theta: Tensor | None = None, generator: torch.Generator | None = None) -> Events:
        """Draw ``n`` events; ``theta`` is ``(P,)`` (one point), ``(n, P)``, or drawn from the proposal."""
        if theta is None:
            theta = self.space.sample(n, generator=generator)
        else:
            theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
            if theta.dim() == 1:
                theta = theta.expand(n, -1)
        self.space.check(theta, argument="theta")
        return checked_sample(self, theta, generator=generator)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable configuration (recorded in stores and published files)."""
        return {"name": self.name, "space": self.space.to_dict(), "observables": list(self.observable_names)}


@runtime_checkable
class JointLikelihood(Protocol):
    """A simulator that evaluates log p(x, z | θ) of its stored latent path at any θ."""

    space: ParameterSpace

    def joint_log_prob(self, events: Events, theta: Tensor) -> Tensor:
        """log p(x, z | θ) for the events' stored latent z at ``theta (N, P)``; returns ``(N,)``, differentiable in θ."""
        ...


@runtime_checkable
class ExactLikelihood(Protocol):
    """A toy simulator whose marginal likelihood p(x | θ) is known in closed form."""

    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        """log p(x | θ) for ``x (N, D)`` and ``theta (N, P)`` (or ``(P,)``); returns ``(N,)``."""
        ...


def _name(simulator: Any) -> str:
    return getattr(simulator, "name", None) or type(simulator).__name__


def checked_sample(simulator: Any, theta: Tensor, generator: torch.Generator | None = None) -> Events:
    """``simulator.sample(theta, generator)``, checked to return Events with one event per row of ``theta (N, P)``.

    Every caller of ``sample`` in the library goes through here, so that a simulator that drops
    rejected rows is named at once (instead of failing later on a θ the library attached itself).

    Raises:
        SamplingError: ``sample`` returned something other than Events, or a different number of rows.
    """
    events = simulator.sample(theta, generator=generator)
    n = int(theta.shape[0])
    if not isinstance(events, Events):
        raise SamplingError(f"{_name(simulator)}.sample returned a {type(events).__name__}; it must return Events "
                            "(Events(x=..., theta=theta, latent=...)) with one event per row of theta.")
    if len(events) != n:
        raise SamplingError(
            f"{_name(simulator)}.sample returned {len(events)} events for {n} rows of theta; it must return exactly one "
            "event per row, in order. A simulator with a rejection step must redraw rejected rows until each is accepted "
            "(or raise SamplingError), not drop them."
        )
    return events


def checked_joint_log_prob(simulator: Any, events: Events, theta: Tensor, *, differentiable: bool = False) -> Tensor:
    """``simulator.joint_log_prob(events, theta)``, checked to be ``(N,)`` (and to carry a graph in θ if ``differentiable``).

    Args:
        events: ``N`` events with the latent path the simulator needs.
        theta: ``(N, P)``; requires grad when ``differentiable``.
        differentiable: The caller needs :math:`\nabla_\theta` (the joint score).

    Raises:
        MissingAugmentedDataError: the output is not a tensor of shape ``(N,)``, or (``differentiable``)
            has no autograd graph in θ, so the joint score cannot be derived.
    """
    out = simulator.joint_log_prob(events, theta)
    n = len(events)
    if not isinstance(out, Tensor) or tuple(out.shape) != (n,):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise MissingAugmentedDataError(f"{_name(simulator)}.joint_log_prob returned {shape}; it must return a tensor of "
                                        f"shape (N,) = ({n},): log p(x, z | theta) of each event.")
    if differentiable and not out.requires_grad:
        raise MissingAugmentedDataError(
            f"{_name(simulator)}.joint_log_prob is not differentiable in theta (its output has no autograd graph), so the "
            "joint score t = d log p(x, z | theta) / d theta cannot be computed. Write it with torch operations on theta "
            "(no .item(), .detach(), numpy or torch.no_grad), or train with a method that needs no score (CARL, ROLR, NDE)."
        )
    return out


def has_joint_likelihood(simulator: Any) -> bool:
    return callable(getattr(simulator, "joint_log_prob", None))


def has_exact_likelihood(simulator: Any) -> bool:
    return callable(getattr(simulator, "log_prob", None))


def autograd_score(log_prob: Any, x: Tensor, theta: Tensor, n_parameters: int) -> Tensor:
    r"""Exact score :math:`\nabla_\theta \log p(x|\theta)`, ``(N, P)``, by autograd of a toy's ``log_prob``.

    Args:
        log_prob: ``log_prob(x, theta) -> (N,)``, differentiable in θ.
        x: ``(N, D)``.
        theta: ``(P,)`` or ``(N, P)``.
    """
    x = torch.as_tensor(x)
    theta = torch.as_tensor(theta, dtype=x.dtype, device=x.device).reshape(-1, n_parameters).expand(x.shape[0], n_parameters)
    with torch.enable_grad():
        point = theta.detach().clone().requires_grad_(True)
        value = log_prob(x, point)
        if not (isinstance(value, Tensor) and value.requires_grad):
            raise MissingAugmentedDataError(
                "autograd_score: log_prob(x, theta) has no autograd graph in theta; write it with torch operations on "
                "theta (no .item(), .detach(), numpy or torch.no_grad) so that its score can be differentiated."
            )
        (grad,) = torch.autograd.grad(value.sum(), point)
    return grad
