r"""Gaussian latent toy: the simplest simulator with a latent path and exact likelihood.

.. math::
    z \sim \mathcal N(\theta, \sigma_z^2), \qquad x \sim \mathcal N(z, \sigma_x^2),
    \qquad p(x|\theta) = \mathcal N(x; \theta, \sigma_z^2 + \sigma_x^2).

Joint score :math:`t(x,z|\theta) = (z-\theta)/\sigma_z^2` — it depends on the latent z, not
on x (using x here is a known mistake of some reference implementations). Exact
score :math:`t(x|\theta) = (x-\theta)/(\sigma_z^2+\sigma_x^2)`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...events import Events
from ..base import Simulator
from ..registry import register_toy
from ..space import ParameterSpace

__all__ = ["GaussianLatent"]

_LOG_2PI = math.log(2 * math.pi)


def _normal_log_prob(x: Tensor, mean: Tensor, sigma: float | Tensor) -> Tensor:
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return -0.5 * ((x - mean) / sigma) ** 2 - torch.log(sigma) - 0.5 * _LOG_2PI


@register_toy("gaussian")
class GaussianLatent(Simulator):
    r"""One parameter :math:`\theta`, one latent z, one observable x.

    Args:
        sigma_z: Width of the latent (parton-level) smearing.
        sigma_x: Width of the detector smearing.
        low, high: Bounds of :math:`\theta`; the reference point is their centre.

    Example:
        >>> sim = GaussianLatent(sigma_z=2.0, sigma_x=1.0)
        >>> ev = sim.simulate(5, generator=torch.Generator().manual_seed(1))
        >>> ev.x.shape, ev.latent.shape
        (torch.Size([5, 1]), torch.Size([5, 1]))
    """

    observable_names = ("x",)

    def __init__(self, sigma_z: float = 2.0, sigma_x: float = 1.0, *, low: float = -2.0, high: float = 2.0) -> None:
        self.sigma_z = float(sigma_z)
        self.sigma_x = float(sigma_x)
        self.space = ParameterSpace(("theta",), low=(low,), high=(high,))

    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Events:
        theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
        n = theta.shape[0]
        z = theta + self.sigma_z * torch.randn(n, 1, generator=generator, dtype=theta.dtype)
        x = z + self.sigma_x * torch.randn(n, 1, generator=generator, dtype=theta.dtype)
        return Events(x=x, theta=theta, latent=z)

    def joint_log_prob(self, events: Events, theta: Tensor) -> Tensor:
        """log p(x, z|θ) = log N(z; θ, σ_z) + log N(x; z, σ_x), ``(N,)``."""
        z, x = events.latent[:, 0].to(theta.dtype), events.x[:, 0].to(theta.dtype)
        return _normal_log_prob(z, theta[:, 0], self.sigma_z) + _normal_log_prob(x, z, self.sigma_x)

    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        """Exact log p(x|θ) = log N(x; θ, σ_z² + σ_x²), ``(N,)``."""
        theta = torch.as_tensor(theta, dtype=x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        return _normal_log_prob(x[:, 0], theta[:, 0], math.hypot(self.sigma_z, self.sigma_x))

    def score(self, x: Tensor, theta: Tensor) -> Tensor:
        """Exact score ∇θ log p(x|θ) = (x − θ)/(σ_z² + σ_x²), ``(N, 1)``."""
        theta = torch.as_tensor(theta, dtype=x.dtype).reshape(-1, 1)
        return (x - theta) / (self.sigma_z**2 + self.sigma_x**2)

    def fisher_information(self, theta: Tensor | None = None) -> Tensor:
        """Per-event Fisher information 1/(σ_z² + σ_x²), ``(1, 1)`` (independent of θ)."""
        return torch.full((1, 1), 1.0 / (self.sigma_z**2 + self.sigma_x**2), dtype=torch.float64)

    def config(self) -> dict:
        return {**super().config(), "sigma_z": self.sigma_z, "sigma_x": self.sigma_x}
