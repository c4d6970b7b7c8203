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
from .space import ParameterSpace

__all__ = ["Simulator", "JointLikelihood", "ExactLikelihood", "has_joint_likelihood", "has_exact_likelihood", "autograd_score"]


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
        return self.sample(theta, generator=generator)

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
        (grad,) = torch.autograd.grad(log_prob(x, point).sum(), point)
    return grad
