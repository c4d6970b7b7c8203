r"""Lifetime toy: an exponential decay time, observed only below a cut, smeared by a detector.

.. math::
    t \sim \mathrm{Exp}(\text{mean } \tau)\ \text{kept only if } t < T, \qquad x = t + \epsilon,\
    \epsilon \sim \mathcal N(0, \sigma^2).

The true decay time t is the latent variable. The acceptance of the cut depends on θ = τ,
:math:`A(\tau) = 1 - e^{-T/\tau}`, so the joint likelihood of the accepted events carries it:

.. math::
    p(x, t | \tau) = \frac{e^{-t/\tau}/\tau\;\mathcal N(x; t, \sigma)}{A(\tau)}, \quad 0 \le t < T,
    \qquad
    p(x | \tau) = \frac{e^{-x/\tau + \sigma^2/2\tau^2}}{\tau A(\tau)}
        \Big[\Phi\Big(\frac{\mu}{\sigma}\Big) - \Phi\Big(\frac{\mu - T}{\sigma}\Big)\Big],
    \quad \mu = x - \frac{\sigma^2}{\tau},

the second by completing the square in :math:`\int_0^T e^{-t/\tau}\mathcal N(x; t, \sigma)\,dt`.

Leaving :math:`-\log A(\tau)` out of the joint log-probability is the classic mistake of a
simulator with a cut: sampling is unchanged, but the joint score gains :math:`\partial_\tau\log A`
and the joint ratio the factor :math:`A(\tau)/A(\tau_\mathrm{ref})`, so estimators trained on
the augmented data learn a mis-normalised ratio and fits are biased. ``include_acceptance=False``
builds that wrong simulator on purpose, to show that the identity checks of
:mod:`sbilab.simulators.checks` catch it (:meth:`Lifetime.log_prob` stays the true likelihood).
At τ = 1, T = 2: A = 0.8646647168 and :math:`\partial_\tau \log A = -0.3130352855`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...events import Events
from ...exceptions import ParameterSpaceError
from ..base import Simulator, autograd_score
from ..registry import register_toy
from ..space import ParameterSpace
from .resonance import _gauss_legendre

__all__ = ["Lifetime"]

_F64 = torch.float64
_LOG_2PI = math.log(2 * math.pi)


def _log_ndtr_difference(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`\log[\Phi(a) - \Phi(b)]` for ``a > b`` elementwise, accurate in both tails."""
    upper = b > 0  # both in the upper tail: Φ(a) - Φ(b) = Φ(-b) - Φ(-a)
    hi = torch.where(upper, torch.special.log_ndtr(-b), torch.special.log_ndtr(a))
    lo = torch.where(upper, torch.special.log_ndtr(-a), torch.special.log_ndtr(b))
    return hi + torch.log1p(-torch.exp(lo - hi))


@register_toy("lifetime")
class Lifetime(Simulator):
    r"""Decay-time toy with an acceptance cut :math:`t < T` that depends on the lifetime τ.

    One parameter τ (mean lifetime), one observable x (measured decay time), one latent t
    (true decay time). Likelihoods are computed in float64 and returned in the dtype of ``theta``
    (:meth:`joint_log_prob`) or ``x`` (:meth:`log_prob`).

    Args:
        t_max: The cut T on the true decay time.
        resolution: Detector resolution σ on the decay time.
        low, high: Bounds of τ (> 0).
        reference: Reference point of τ.
        include_acceptance: ``False`` leaves :math:`-\log A(\tau)` out of :meth:`joint_log_prob`:
            a deliberately wrong simulator (see the module docs), for tests of the identity checks.

    Example:
        >>> sim = Lifetime()
        >>> round(sim.acceptance(torch.tensor([[1.0]], dtype=torch.float64)).item(), 10)
        0.8646647168
        >>> ev = sim.simulate(4, generator=torch.Generator().manual_seed(0))
        >>> bool((ev.latent < 2.0).all()), ev.x.shape
        (True, torch.Size([4, 1]))
    """

    observable_names = ("x",)

    def __init__(
        self,
        t_max: float = 2.0,
        resolution: float = 0.1,
        *,
        low: float = 0.5,
        high: float = 2.0,
        reference: float = 1.0,
        include_acceptance: bool = True,
    ) -> None:
        if not t_max > 0:
            raise ParameterSpaceError(f"Lifetime: t_max must be > 0, got {t_max}.")
        if not resolution > 0:
            raise ParameterSpaceError(f"Lifetime: resolution must be > 0, got {resolution}.")
        if not low > 0:
            raise ParameterSpaceError(f"Lifetime: the lower bound of tau must be > 0, got {low}.")
        self.t_max = float(t_max)
        self.resolution = float(resolution)
        self.include_acceptance = bool(include_acceptance)
        self.space = ParameterSpace(("tau",), low=(low,), high=(high,), reference=(reference,))

    def acceptance(self, theta: Tensor) -> Tensor:
        r""":math:`A(\tau) = 1 - e^{-T/\tau}`, ``(N,)`` for ``theta (N, 1)``; differentiable."""
        tau = torch.as_tensor(theta)[:, 0]
        return -torch.expm1(-self.t_max / tau)

    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Events:
        r"""One accepted event per row of ``theta (N, 1)``: t by the inverse CDF of the truncated
        exponential, :math:`t = -\tau\log(1 - u A(\tau))` (no rejection), then x = t + σε."""
        theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
        tau = theta.to(_F64)[:, 0]
        n = tau.shape[0]
        u = torch.rand(n, generator=generator, dtype=_F64)
        t = -tau * torch.log1p(-u * self.acceptance(tau.unsqueeze(1)))
        t = torch.minimum(t, torch.full_like(t, math.nextafter(self.t_max, 0.0)))  # rounding at u -> 1
        x = t + self.resolution * torch.randn(n, generator=generator, dtype=_F64)
        return Events(x=x.to(theta.dtype).unsqueeze(1), theta=theta, latent=t.to(theta.dtype).unsqueeze(1))

    def joint_log_prob(self, events: Events, theta: Tensor) -> Tensor:
        r""":math:`\log p(x, t|\tau) = -\log\tau - t/\tau + \log\mathcal N(x; t, \sigma) - \log A(\tau)`, ``(N,)``.

        Without the last term when ``include_acceptance=False``; −inf for t outside [0, T).
        """
        tau = theta.to(_F64)[:, 0]
        t = events.latent[:, 0].to(_F64)
        x = events.x[:, 0].to(_F64)
        log_p = -torch.log(tau) - t / tau - 0.5 * ((x - t) / self.resolution) ** 2 - math.log(self.resolution) - 0.5 * _LOG_2PI
        if self.include_acceptance:
            log_p = log_p - torch.log(self.acceptance(tau.unsqueeze(1)))
        inside = (t >= 0) & (t < self.t_max)
        return torch.where(inside, log_p, torch.full_like(log_p, -math.inf)).to(theta.dtype)

    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Exact (true) :math:`\log p(x|\tau)` of the module docs, ``(N,)``, whatever ``include_acceptance`` says.

        Args:
            x: ``(N, 1)``.
            theta: ``(N, 1)`` or ``(1,)``.
        """
        x = torch.as_tensor(x)
        tau = torch.as_tensor(theta, dtype=x.dtype, device=x.device).to(_F64).reshape(-1, 1).expand(x.shape[0], 1)[:, 0]
        xx = x[:, 0].to(_F64)
        s = self.resolution
        mu = xx - s**2 / tau
        log_p = (-xx / tau + s**2 / (2 * tau**2) - torch.log(tau) - torch.log(self.acceptance(tau.unsqueeze(1)))
                 + _log_ndtr_difference(mu / s, (mu - self.t_max) / s))
        return log_p.to(x.dtype)

    def score(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Exact score :math:`\partial_\tau \log p(x|\tau)`, ``(N, 1)``, by autograd of :meth:`log_prob`."""
        return autograd_score(self.log_prob, x, theta, 1)

    def fisher_information(self, theta: Tensor | None = None) -> Tensor:
        r"""Per-event Fisher information :math:`E[t^2]`, ``(1, 1)`` float64, at ``theta (1,)`` (default: reference).

        Integrated over :math:`x \in [-10\sigma, T + 10\sigma]` by composite Gauss–Legendre
        quadrature (panels of width σ).
        """
        point = self.space.reference if theta is None else torch.as_tensor(theta, dtype=_F64).reshape(-1)
        s = self.resolution
        nodes, weights = _gauss_legendre(-10 * s, self.t_max + 10 * s, s)
        x = nodes.unsqueeze(1)
        th = point.to(_F64).expand(x.shape[0], 1)
        t = self.score(x, th)
        p = self.log_prob(x, th).exp()
        return torch.einsum("n,ni,nj->ij", weights * p, t, t)

    def config(self) -> dict:
        return {**super().config(), "t_max": self.t_max, "resolution": self.resolution, "include_acceptance": self.include_acceptance}
