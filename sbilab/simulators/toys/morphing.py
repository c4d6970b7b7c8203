r"""EFT-like morphing toy: a falling pT spectrum whose rate is quadratic in one or two couplings.

An amplitude linear in the couplings :math:`g = (1, \theta_1[, \theta_2])` with real, x-dependent
components, plus a positive non-interfering background, gives

.. math::
    \frac{d\sigma}{dx}(x|\theta) = \kappa\Big[\Big(\sum_i g_i\, a_i(x)\Big)^2 + b(x)\Big]
    = \sum_c m_c(\theta)\, f_c(x), \qquad
    a_i(x) = c_i \Big(\frac{x}{\lambda_i}\Big)^{p_i} e^{-x/2\lambda_i},\quad b(x) = \beta e^{-x/\lambda_b},

with monomials :math:`m_c \in \{1, \theta_1, \theta_2, \theta_1^2, \theta_1\theta_2, \theta_2^2\}`
(SM, interference, squared terms; the order of :class:`~sbilab.simulators.weighted.MorphingBasis`).
:math:`d\sigma > 0` for every θ (a square plus :math:`b > 0`). The BSM components harden the
spectrum (:math:`\lambda_0 = 40 < \lambda_1 = 70 < \lambda_2 = 100` GeV). Cross sections are in pb
(:math:`\sigma(0) = 1` pb), x = pT in GeV on :math:`[0, \infty)`. Every integral is a Gamma
function: :math:`\int_0^\infty x^k e^{-x/\mu} dx = k!\,\mu^{k+1}`.

Exact likelihood :math:`p(x|\theta) = d\sigma(x|\theta)/\sigma(\theta)`. x is the whole event
(no latent), so :meth:`Morphing.joint_log_prob` equals :meth:`Morphing.log_prob`.

Weighted events (MadGraph reweighting style): x is drawn from the fixed proposal
:math:`q(x) \propto \sum_i a_i^2 + b` and carries :math:`w_b = d\sigma(x|\theta_b)/q(x)` per
benchmark, whose mean over events is :math:`\sigma(\theta_b)` (``event_norm="average"``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ...events import Events
from ...exceptions import ParameterSpaceError, SamplingError
from ..base import Simulator
from ..registry import register_toy
from ..space import ParameterSpace
from ..weighted import MorphingBasis, WeightedEvents

__all__ = ["Morphing"]

_F64 = torch.float64
# (coefficient c_i, power p_i, scale lambda_i) of the SM amplitude and of the two operators
_AMPLITUDES = ((1.0, 0, 40.0), (0.5, 1, 70.0), (0.15, 2, 100.0))
_BACKGROUND = (0.3, 25.0)  # beta, lambda_b


@register_toy("morphing")
class Morphing(Simulator):
    r"""Quadratic morphing toy with one or two couplings and one observable (pT).

    Args:
        n_couplings: 1 or 2.
        low, high: Bounds of every coupling (default [-1, 1]); the reference is the SM (0).
        max_rounds: Bound on accept–reject rounds in :meth:`sample`.

    Example:
        >>> sim = Morphing(2)
        >>> sim.cross_section(torch.zeros(1, 2, dtype=torch.float64)).item()
        1.0
        >>> x, w = sim.sample_weighted(3, torch.zeros(6, 2), generator=torch.Generator().manual_seed(0))
        >>> x.shape, w.shape
        (torch.Size([3, 1]), torch.Size([3, 6]))
    """

    observable_names = ("pt",)

    def __init__(self, n_couplings: int = 2, *, low: float = -1.0, high: float = 1.0, max_rounds: int = 200) -> None:
        if n_couplings not in (1, 2):
            raise ParameterSpaceError(f"Morphing: n_couplings must be 1 or 2, got {n_couplings}.")
        self.n_couplings = n_couplings
        names = ("theta_1", "theta_2")[:n_couplings]
        self.space = ParameterSpace(names, low=(low,) * n_couplings, high=(high,) * n_couplings, reference=(0.0,) * n_couplings)
        self.basis = MorphingBasis(n_couplings, max_power=2)
        self.max_rounds = int(max_rounds)
        amps = _AMPLITUDES[: n_couplings + 1]
        self._c = torch.tensor([a[0] for a in amps], dtype=_F64)
        self._p = torch.tensor([a[1] for a in amps], dtype=_F64)
        self._lam = torch.tensor([a[2] for a in amps], dtype=_F64)
        beta, lam_b = _BACKGROUND
        # norms of a_i^2 and b: c_i^2 (2 p_i)! lambda_i, beta lambda_b
        self._sq_norm = self._c**2 * torch.exp(torch.lgamma(2 * self._p + 1)) * self._lam
        self._bkg_norm = beta * lam_b
        self.kappa = 1.0 / (float(self._sq_norm[0]) + self._bkg_norm)
        # pair (i, j) -> component index of the monomial g_i g_j
        exps = self.basis.exponents.tolist()
        self._pairs: list[tuple[int, int, int, float]] = []
        for i in range(n_couplings + 1):
            for j in range(i, n_couplings + 1):
                e = [0] * n_couplings
                for k in (i, j):
                    if k:
                        e[k - 1] += 1
                self._pairs.append((i, j, exps.index(e), 1.0 if i == j else 2.0))

    # ------------------------------------------------------------------ shapes and rates
    def _amplitudes(self, x: Tensor) -> Tensor:
        """a_i(x), ``(N, n_couplings + 1)`` for ``x (N,)``."""
        x = x.unsqueeze(1)
        return self._c * (x / self._lam) ** self._p * torch.exp(-x / (2 * self._lam))

    def _background(self, x: Tensor) -> Tensor:
        beta, lam_b = _BACKGROUND
        return beta * torch.exp(-x / lam_b)

    def component_shapes(self, x: Tensor) -> Tensor:
        r"""Components :math:`f_c(x)` (pb/GeV) in the basis order, ``(N, C)`` for ``x (N, 1)``."""
        xx = torch.as_tensor(x, dtype=_F64)[:, 0]
        a = self._amplitudes(xx)
        out = torch.zeros(xx.shape[0], self.basis.n_components, dtype=_F64)
        for i, j, c, mult in self._pairs:
            out[:, c] += mult * a[:, i] * a[:, j]
        out[:, 0] += self._background(xx)
        return self.kappa * out

    def component_cross_sections(self) -> Tensor:
        r""":math:`\int f_c(x)\,dx` (pb), ``(C,)``, in closed form."""
        out = torch.zeros(self.basis.n_components, dtype=_F64)
        for i, j, c, mult in self._pairs:
            p = self._p[i] + self._p[j]
            mu = 2 * self._lam[i] * self._lam[j] / (self._lam[i] + self._lam[j])
            norm = self._c[i] * self._c[j] / (self._lam[i] ** self._p[i] * self._lam[j] ** self._p[j])
            out[c] += mult * norm * torch.exp(torch.lgamma(p + 1)) * mu ** (p + 1)
        out[0] += self._bkg_norm
        return self.kappa * out

    def differential_cross_section(self, x: Tensor, theta: Tensor) -> Tensor:
        r""":math:`d\sigma/dx` (pb/GeV), ``(N,)`` for ``x (N, 1)``, ``theta (N, P)`` or ``(P,)``; differentiable."""
        xx = torch.as_tensor(x).to(_F64)[:, 0]
        th = torch.as_tensor(theta).to(_F64).reshape(-1, self.n_couplings).expand(xx.shape[0], -1)
        g = torch.cat([torch.ones_like(th[:, :1]), th], dim=1)
        return self.kappa * (((g * self._amplitudes(xx)).sum(1)) ** 2 + self._background(xx))

    def cross_section(self, theta: Tensor) -> Tensor:
        r"""Total cross section :math:`\sigma(\theta) = \sum_c m_c(\theta)\sigma_c` (pb), ``(N,)`` for ``theta (N, P)``."""
        th = torch.as_tensor(theta).to(_F64).reshape(-1, self.n_couplings)
        return self.basis.components(th) @ self.component_cross_sections()

    def expected_events(self, theta: Tensor, luminosity: float) -> Tensor:
        r"""Expected yield :math:`\nu(\theta) = L\,\sigma(\theta)`, ``(N,)``; ``luminosity`` in pb⁻¹."""
        return luminosity * self.cross_section(theta)

    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Exact :math:`\log p(x|\theta) = \log d\sigma(x|\theta) - \log\sigma(\theta)`, ``(N,)`` in the dtype of ``x``."""
        x = torch.as_tensor(x)
        th = torch.as_tensor(theta).to(_F64).reshape(-1, self.n_couplings).expand(x.shape[0], -1)
        log_p = torch.log(self.differential_cross_section(x, th)) - torch.log(self.cross_section(th))
        return torch.where(x[:, 0] >= 0, log_p, torch.full_like(log_p, -math.inf)).to(x.dtype)

    def joint_log_prob(self, events: Events, theta: Tensor) -> Tensor:
        """Equal to :meth:`log_prob` (x is the whole event, no latent), ``(N,)`` in the dtype of ``theta``."""
        return self.log_prob(events.x.to(_F64), theta).to(theta.dtype)

    def score(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Exact score :math:`\nabla_\theta \log p(x|\theta)`, ``(N, P)`` float64, by autograd."""
        x = torch.as_tensor(x).to(_F64)
        th = torch.as_tensor(theta).to(_F64).reshape(-1, self.n_couplings).expand(x.shape[0], -1)
        with torch.enable_grad():
            point = th.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(x, point).sum(), point)
        return grad

    # ------------------------------------------------------------------ sampling
    def _draw_mixture(self, mix: Tensor, generator: torch.Generator | None) -> Tensor:
        """x from the mixture of Gamma(2p_i+1, λ_i) components and Exp(λ_b) with row weights ``mix (N, K+1)``."""
        n = mix.shape[0]
        comp = torch.multinomial(mix, 1, generator=generator)[:, 0]
        shapes = torch.cat([2 * self._p + 1, torch.ones(1, dtype=_F64)]).long()
        scales = torch.cat([self._lam, torch.tensor([_BACKGROUND[1]], dtype=_F64)])
        u = torch.rand(n, int(shapes.max()), generator=generator, dtype=_F64)
        logs = torch.log1p(-u).cumsum(dim=1)  # integer-shape Gamma = sum of exponentials
        return -scales[comp] * logs.gather(1, (shapes[comp] - 1).unsqueeze(1))[:, 0]

    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Events:
        r"""Unweighted events, one per row of ``theta (N, P)``, by accept–reject from the envelope
        :math:`3\sum_i g_i^2 a_i^2 + b \ge (\sum_i g_i a_i)^2 + b` (acceptance ≥ 1/3).

        Raises:
            SamplingError: some rows got no accepted event within ``max_rounds``.
        """
        theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
        th = theta.to(_F64)
        n = th.shape[0]
        x = torch.empty(n, dtype=_F64)
        pending = torch.arange(n)
        for _ in range(self.max_rounds):
            if pending.numel() == 0:
                break
            g2 = torch.cat([torch.ones(pending.numel(), 1, dtype=_F64), th[pending] ** 2], dim=1)
            mix = torch.cat([3 * g2 * self._sq_norm, torch.full((pending.numel(), 1), self._bkg_norm, dtype=_F64)], dim=1)
            cand = self._draw_mixture(mix, generator)
            a2 = self._amplitudes(cand) ** 2
            envelope = 3 * (g2 * a2).sum(1) + self._background(cand)
            target = self.differential_cross_section(cand.unsqueeze(1), th[pending]) / self.kappa
            ok = torch.rand(pending.numel(), generator=generator, dtype=_F64) * envelope < target
            x[pending[ok]] = cand[ok]
            pending = pending[~ok]
        if pending.numel():
            raise SamplingError(f"Morphing.sample: {pending.numel()} rows unaccepted after {self.max_rounds} rounds; raise max_rounds.")
        return Events(x=x.to(theta.dtype).unsqueeze(1), theta=theta)

    def proposal_log_prob(self, x: Tensor) -> Tensor:
        r"""log of the fixed proposal :math:`q(x) = (\sum_i a_i^2 + b)/Z` of weighted events, ``(N,)``."""
        xx = torch.as_tensor(x, dtype=_F64)[:, 0]
        z = float(self._sq_norm.sum()) + self._bkg_norm
        return torch.log((self._amplitudes(xx) ** 2).sum(1) + self._background(xx)) - math.log(z)

    def sample_weighted(self, n: int, benchmarks: Any, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        r"""``n`` events from the proposal with weights :math:`w_b = d\sigma(x|\theta_b)/q(x)` (pb).

        Args:
            benchmarks: ``(B, P)`` points.

        Returns:
            ``x (n, 1)`` and ``weights (n, B)``, both float64; the mean weight estimates :math:`\sigma(\theta_b)`.
        """
        bench = torch.as_tensor(benchmarks, dtype=_F64).reshape(-1, self.n_couplings)
        mix = torch.cat([self._sq_norm, torch.tensor([self._bkg_norm], dtype=_F64)]).expand(n, -1)
        x = self._draw_mixture(mix.contiguous(), generator).unsqueeze(1)
        log_q = self.proposal_log_prob(x)
        weights = torch.stack(
            [self.differential_cross_section(x, b) / torch.exp(log_q) for b in bench], dim=1
        )
        return x, weights

    def weighted_events(self, n: int, benchmarks: Any, *, generator: torch.Generator | None = None) -> WeightedEvents:
        """:meth:`sample_weighted` wrapped as :class:`~sbilab.simulators.weighted.WeightedEvents` on this toy's space."""
        x, w = self.sample_weighted(n, benchmarks, generator=generator)
        basis = MorphingBasis(self.n_couplings, max_power=2, benchmarks=benchmarks)
        return WeightedEvents(x, w, basis, space=self.space, observable_names=self.observable_names)

    def config(self) -> dict:
        return {**super().config(), "n_couplings": self.n_couplings}
