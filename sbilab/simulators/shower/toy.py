r"""The exact primary-emission toy: emissions off one quark leg as a Poisson process.

Emissions :math:`(t_i, z_i)` off one quark leg at :math:`Q^2 = 10^4` GeV² with a fixed coupling
:math:`\alpha_s = 0.118`, :math:`t \in [1, Q^2/4]` GeV², :math:`y = t/(Q^2 z(1-z)) < 1`, form a
Poisson process with intensity

.. math:: \lambda(t, z|\theta) = \frac{\alpha_s}{2\pi}\,\frac1t\,(1-y)\,P_{qq}(z, y; D, F, C),

(:mod:`~sbilab.simulators.shower.kernels`). Its likelihood is exact:

.. math:: \log L(\theta) = -\bar N(\theta) + \sum_i \log\lambda(t_i, z_i|\theta), \qquad
    \bar N(\theta) = D\,I_D + F\,I_F + C\,I_C,

with the coefficient integrals :math:`I = \int\!\!\int \frac{\alpha_s}{2\pi t}(1-y)\,g(z,y)\,dt\,dz`
(:func:`emission_integrals`, by quadrature): :math:`I_D = 0.629037`, :math:`I_F = 0.0777827`,
:math:`I_C = 0.00208420`, so :math:`\bar N = 0.70682` and :math:`P(0) = e^{-\bar N} = 0.49321` at
the standard kernel. The per-event Fisher information is
:math:`I_{ab} = \int g_a g_b/(\theta\cdot g)\,\frac{\alpha_s}{2\pi t}(1-y)\,dt\,dz`.

An event is the set of its emissions, ``x (N, M, 2)`` with features :math:`(\ln t, z)` and a mask;
:meth:`PrimaryEmissions.log_prob` is the density with respect to :math:`\prod_i d\ln t_i\,dz_i`
(the formula above plus the θ-independent :math:`\sum_i \ln t_i`). x is the whole latent state, so
:meth:`~PrimaryEmissions.joint_log_prob` equals :meth:`~PrimaryEmissions.log_prob`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...events import Events
from ...exceptions import ConfigError, ShapeMismatchError
from ..base import Simulator
from ..space import ParameterSpace
from .kernels import Overestimate, check_kernel, qq_coefficients

__all__ = ["PrimaryEmissions", "emission_integrals", "emission_nodes"]

_F64 = torch.float64


def _legendre(lo: float, hi: float, panels: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    t, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(lo, hi, panels + 1)
    half = (edges[1:] - edges[:-1])[:, None] / 2
    return ((edges[1:] + edges[:-1])[:, None] / 2 + half * t).ravel(), (half * w).ravel()


def emission_nodes(q2: float = 1e4, t_min: float = 1.0, *, panels: int = 8, order: int = 16) -> tuple[Tensor, Tensor, Tensor]:
    r"""Product Gauss–Legendre nodes over the emission phase space, float64.

    :math:`t \in [t_\mathrm{min}, Q^2/8]` in :math:`\ln t`; :math:`t \in [Q^2/8, Q^2/4]` in
    :math:`s = \sqrt{1 - 4t/Q^2}` (the z-range closes like :math:`s` there); at each t,
    :math:`z` in :math:`\operatorname{logit} z \in [-\ell, \ell]`, :math:`\ell = \operatorname{arccosh}(\sqrt{Q^2/4t})\cdot 2`
    (the limits :math:`z_\pm = (1 \pm s)/2`). Every integrand here is smooth in these variables.

    Returns:
        ``t (Q,)``, ``z (Q,)``, ``weight (Q,)`` with :math:`\iint f\,dt\,dz \approx \sum_q w_q f(t_q, z_q)`.
    """
    if not 0 < t_min < q2 / 8:
        raise ConfigError(f"emission_nodes: t_min = {t_min} must lie in (0, q2/8 = {q2 / 8}).")
    u, wu = _legendre(math.log(t_min), math.log(q2 / 8), panels, order)
    t_low, wt_low = np.exp(u), wu * np.exp(u)
    s, ws = _legendre(0.0, math.sqrt(0.5), max(panels // 4, 2), order)
    t_high, wt_high = q2 * (1 - s**2) / 4, ws * q2 * s / 2
    t, wt = np.concatenate([t_low, t_high]), np.concatenate([wt_low, wt_high])
    root = np.sqrt(1 - 4 * t / q2)
    ell = np.log((1 + root) / (1 - root))  # logit of z+ = (1 + s)/2
    v, wv = _legendre(-1.0, 1.0, panels, order)  # w = ell * v
    w = ell[:, None] * v[None, :]
    z = 1 / (1 + np.exp(-w))
    weight = wt[:, None] * (ell[:, None] * wv[None, :]) * z * (1 - z)
    t_all = np.broadcast_to(t[:, None], z.shape)
    return torch.from_numpy(t_all.ravel().copy()), torch.from_numpy(z.ravel().copy()), torch.from_numpy(weight.ravel().copy())


def _intensity_coefficients(t: Tensor, z: Tensor, q2: float, alpha_s: float) -> Tensor:
    r""":math:`\frac{\alpha_s}{2\pi t}(1-y)\,g(z, y)`, ``(..., 3)``: the intensity is θ times this."""
    y = t / (q2 * z * (1 - z))
    return (alpha_s / (2 * math.pi)) / t.unsqueeze(-1) * (1 - y).unsqueeze(-1) * qq_coefficients(z, y)


def emission_integrals(q2: float = 1e4, alpha_s: float = 0.118, t_min: float = 1.0, *, panels: int = 8, order: int = 16) -> Tensor:
    r"""Coefficient integrals :math:`(I_D, I_F, I_C)` with :math:`\bar N(\theta) = \theta\cdot I`, ``(3,)`` float64.

    Example:
        >>> [round(v, 6) for v in emission_integrals().tolist()]
        [0.629037, 0.077783, 0.002084]
    """
    t, z, w = emission_nodes(q2, t_min, panels=panels, order=order)
    return (w.unsqueeze(-1) * _intensity_coefficients(t, z, q2, alpha_s)).sum(0)


class PrimaryEmissions(Simulator):
    r"""Primary emissions off one quark leg: the exact-likelihood toy of the (D, F, C) kernel.

    Args:
        q2: :math:`Q^2` in GeV². alpha_s: fixed coupling. t_min: lower end of t in GeV².
        low, high, reference: The parameter space of (D, F, C) (``high`` sets the sampling
            overestimate; ``low`` must keep the kernel non-negative).

    Example:
        >>> toy = PrimaryEmissions()
        >>> round(toy.expected_emissions(torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)).item(), 5)
        0.70682
        >>> ev = toy.simulate(3, theta=torch.tensor([1.0, 1.0, 0.0]), generator=torch.Generator().manual_seed(0))
        >>> ev.x.shape[0], ev.x.shape[2]
        (3, 2)
    """

    observable_names = ("log_t", "z")

    def __init__(self, *, q2: float = 1e4, alpha_s: float = 0.118, t_min: float = 1.0,
                 low: tuple[float, float, float] = (0.5, 0.5, -0.5), high: tuple[float, float, float] = (1.5, 1.5, 1.5),
                 reference: tuple[float, float, float] = (1.0, 1.0, 0.0)) -> None:
        if not 0 < t_min < q2 / 8:
            raise ConfigError(f"PrimaryEmissions: t_min = {t_min} GeV^2 must lie in (0, Q^2/8 = {q2 / 8}) GeV^2.")
        check_kernel(torch.tensor([low], dtype=_F64), argument="PrimaryEmissions low bounds")
        self.q2, self.alpha_s, self.t_min = float(q2), float(alpha_s), float(t_min)
        self.space = ParameterSpace(("D", "F", "C"), low=low, high=high, reference=reference)
        self.overestimate = Overestimate(*(float(h) for h in high))
        self.integrals = emission_integrals(self.q2, self.alpha_s, self.t_min)
        self._nodes = emission_nodes(self.q2, self.t_min)

    # ------------------------------------------------------------------ exact quantities
    def expected_emissions(self, theta: Tensor) -> Tensor:
        r""":math:`\bar N(\theta) = \theta\cdot I`, ``(N,)`` for ``theta (N, 3)`` (differentiable)."""
        return torch.as_tensor(theta).to(_F64) @ self.integrals.to(torch.as_tensor(theta).device)

    def fisher_information(self, theta: Tensor) -> Tensor:
        r"""Per-event Fisher information :math:`\int g g^\top/(\theta\cdot g)\,d\mu`, ``(3, 3)`` at ``theta (3,)``."""
        t, z, w = self._nodes
        g = _intensity_coefficients(t, z, self.q2, self.alpha_s)
        th = torch.as_tensor(theta, dtype=_F64).reshape(3)
        return torch.einsum("q,qa,qb->ab", w / (g @ th), g, g)

    def _emissions(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if x.dim() != 3 or x.shape[-1] != 2:
            raise ShapeMismatchError(f"PrimaryEmissions: x has shape {tuple(x.shape)}; expected (N, M, 2) sets of (ln t, z).")
        mask = (x[..., 1] > 0) if mask is None else mask.bool()
        t = torch.where(mask, x[..., 0].to(_F64).exp(), torch.full_like(x[..., 0], 2.0, dtype=_F64))
        z = torch.where(mask, x[..., 1].to(_F64), torch.full_like(x[..., 1], 0.5, dtype=_F64))
        return t, z, mask

    def log_prob(self, x: Tensor, theta: Tensor, mask: Tensor | None = None) -> Tensor:
        r"""Exact :math:`\log p(x|\theta) = -\bar N(\theta) + \sum_i \log[\frac{\alpha_s}{2\pi}(1-y_i) P_{qq}(z_i, y_i)]`, ``(N,)``.

        Args:
            x: ``(N, M, 2)`` emissions :math:`(\ln t, z)`; padding has z = 0.
            theta: ``(P,)`` or ``(N, P)``.
            mask: ``(N, M)``; default: the entries with z > 0 (so callers without a mask work).
        """
        t, z, mask = self._emissions(torch.as_tensor(x), mask)
        th = torch.as_tensor(theta).to(_F64).reshape(-1, 3).expand(t.shape[0], 3)
        density = _intensity_coefficients(t, z, self.q2, self.alpha_s) @ th.unsqueeze(-1)
        log_density = torch.log(density.squeeze(-1) * t)
        terms = torch.where(mask, log_density, torch.zeros_like(log_density))
        return terms.sum(1) - self.expected_emissions(th)

    def joint_log_prob(self, events: Events, theta: Tensor) -> Tensor:
        """Equals :meth:`log_prob`: the emissions are the whole latent state. ``(N,)``."""
        return self.log_prob(events.x, theta, events.mask)

    # ------------------------------------------------------------------ sampling
    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Events:
        r"""One event per row of ``theta (N, 3)`` by thinning the overestimate
        :math:`\frac{\alpha_s}{2\pi t}\hat P_{qq}(z)` on :math:`t \in [t_\mathrm{min}, Q^2/4]`,
        :math:`z_\pm = \tfrac12(1 \pm \sqrt{1 - 4t_\mathrm{min}/Q^2})`.
        """
        theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
        self.overestimate.check(theta)
        th = theta.to(_F64)
        n = th.shape[0]
        over = self.overestimate
        zm = 0.5 * (1 - math.sqrt(1 - 4 * self.t_min / self.q2))
        zp = 1 - zm
        span = math.log(self.q2 / (4 * self.t_min))
        soft, flat = over.soft * math.log(zp / zm), over.flat * (zp - zm)
        rate = self.alpha_s / (2 * math.pi) * span * (soft + flat)
        counts = torch.poisson(torch.full((n,), rate, dtype=_F64), generator=generator).long()
        owner = torch.repeat_interleave(torch.arange(n), counts)
        u = torch.rand(4, owner.numel(), generator=generator, dtype=_F64)
        t = self.t_min * torch.exp(span * u[0])
        omz = torch.where(u[1] * (soft + flat) < soft, zp * (zm / zp) ** u[2], 1 - (zm + (zp - zm) * u[2]))
        z = 1 - omz
        y = t / (self.q2 * z * omz)
        p_hat = over.soft / omz + over.flat
        value = (qq_coefficients(z, y) * th[owner]).sum(-1)
        keep = (y < 1) & (u[3] * p_hat < (1 - y) * value)
        owner, t, z = owner[keep], t[keep], z[keep]
        per_event = torch.bincount(owner, minlength=n)
        width = max(int(per_event.max()) if n else 0, 1)
        start = torch.cumsum(per_event, 0) - per_event
        slot = torch.arange(owner.numel()) - start[owner]
        x = torch.zeros(n, width, 2, dtype=_F64)
        x[owner, slot] = torch.stack([torch.log(t), z], dim=1)
        mask = torch.arange(width).unsqueeze(0) < per_event.unsqueeze(1)
        return Events(x=x.to(theta.dtype), theta=theta, mask=mask)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "q2": self.q2, "alpha_s": self.alpha_s, "t_min": self.t_min}
