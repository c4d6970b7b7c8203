r"""Resonance on a falling background, with the detector resolution as a parameter.

Signal: the :class:`~sbilab.simulators.toys.resonance.Resonance` line shape (Breit–Wigner of
pole mass M and width Γ, smeared by a Gaussian detector of resolution :math:`\sigma`), now with
:math:`\sigma` a parameter (a nuisance parameter in an analysis). Background: a falling
exponential of slope :math:`\lambda` in the fiducial window. The background makes up a known
fraction :math:`f_b` of the events in the window:

.. math::
    p(x|M,\Gamma,\sigma) = (1-f_b)\,\frac{V(x-M;\sigma,\Gamma/2)}{A(M,\Gamma,\sigma)}
        + f_b\,\frac{e^{-x/\lambda}}{\lambda\,(e^{-x_\mathrm{lo}/\lambda}-e^{-x_\mathrm{hi}/\lambda})},
    \qquad x_\mathrm{lo} < x < x_\mathrm{hi},

with the Voigt profile V and the window acceptance :math:`A = \int V\,dx` of the signal.

Latent path z = (m, c): the parton-level mass m and the process label c (1 signal, 0
background; background events carry m = x, which no likelihood uses). The joint likelihood is

.. math::
    p(x, m, c=1|\theta) = (1-f_b)\,\frac{\mathrm{Cauchy}(m; M, \Gamma/2)\,\mathcal N(x; m, \sigma)}{A(\theta)},
    \qquad p(x, m, c=0|\theta) = f_b\, b(x),

so the joint score vanishes on background events and :math:`E[t(x,z|\theta)|x] = t(x|\theta)`
still holds (arXiv:1805.12244). The acceptance's gradient is closed form: with
:math:`z_{a} = (a - M + i\Gamma/2)/(\sigma\sqrt 2)`,
:math:`\partial_M A = V(x_\mathrm{lo}-M) - V(x_\mathrm{hi}-M)`,
:math:`\partial_{\Gamma/2} A = -\mathrm{Im}[w(z_\mathrm{hi}) - w(z_\mathrm{lo})]/(\sigma\sqrt{2\pi})` and, since a
Gaussian convolution obeys the heat equation :math:`\partial_\sigma V = \sigma\,\partial_u^2 V`,
:math:`\partial_\sigma A = \sigma\,[V'(x_\mathrm{hi}-M) - V'(x_\mathrm{lo}-M)]` with
:math:`V'(u) = -\mathrm{Re}[z\,w(z)]/(\sqrt\pi\,\sigma^2)`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...events import Events
from ...exceptions import ParameterSpaceError, SamplingError
from ..base import Simulator, autograd_score
from ..registry import register_toy
from ..space import ParameterSpace
from .resonance import _Acceptance, _gauss_legendre, draw_in_window, faddeeva, restrict_to_window, voigt_log_pdf

__all__ = ["ResonanceBackground"]

_F64 = torch.float64
_LOG_2PI = math.log(2 * math.pi)


@register_toy("resonance_background")
class ResonanceBackground(Simulator):
    r"""Breit–Wigner signal on an exponential background; parameters θ = (M, Γ, σ_det).

    Args:
        background_fraction: :math:`f_b`, the background fraction inside the window, in [0, 1).
        slope: :math:`\lambda` of the background :math:`e^{-x/\lambda}` (GeV).
        window: Fiducial window (lo, hi) on x.
        low, high: Bounds of (M, Γ, σ_det); Γ and σ_det must stay > 0.
        reference: Reference point (default (100, 5, 2)).
        max_rounds: Bound on the accept–reject rounds of :meth:`sample`.

    Example:
        >>> sim = ResonanceBackground()
        >>> th = torch.tensor([[100.0, 5.0, 2.0]], dtype=torch.float64)
        >>> round(sim.acceptance(th).item(), 10)  # the Resonance toy's value at σ = 2
        0.8929820109
        >>> ev = sim.simulate(4, generator=torch.Generator().manual_seed(0))
        >>> ev.latent.shape
        torch.Size([4, 2])
    """

    observable_names = ("x",)

    def __init__(
        self,
        background_fraction: float = 0.3,
        slope: float = 20.0,
        *,
        window: tuple[float, float] = (85.0, 115.0),
        low: tuple[float, float, float] = (95.0, 2.0, 1.5),
        high: tuple[float, float, float] = (105.0, 8.0, 2.5),
        reference: tuple[float, float, float] = (100.0, 5.0, 2.0),
        max_rounds: int = 200,
    ) -> None:
        if not 0.0 <= background_fraction < 1.0:
            raise ParameterSpaceError(f"ResonanceBackground: background_fraction must lie in [0, 1), got {background_fraction}.")
        if not slope > 0:
            raise ParameterSpaceError(f"ResonanceBackground: slope must be > 0, got {slope}.")
        lo, hi = (float(v) for v in window)
        if not lo < hi:
            raise ParameterSpaceError(f"ResonanceBackground: window must be (lo, hi) with lo < hi, got {window}.")
        if not (low[1] > 0 and low[2] > 0):
            raise ParameterSpaceError(f"ResonanceBackground: the lower bounds of Gamma and sigma_det must be > 0, got {low}.")
        self.background_fraction = float(background_fraction)
        self.slope = float(slope)
        self.window = (lo, hi)
        self.max_rounds = int(max_rounds)
        self.space = ParameterSpace(("M", "Gamma", "sigma_det"), low=low, high=high, reference=reference)
        self._nodes, self._weights = _gauss_legendre(lo, hi, 5.0 * float(low[2]))
        self._log_bkg_norm = math.log(self.slope) + math.log(math.exp(-lo / self.slope) - math.exp(-hi / self.slope))

    # ------------------------------------------------------------------ sampling
    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Events:
        """One event per row of ``theta (N, 3)``: x ``(N, 1)``, latent (m, c) ``(N, 2)``.

        Raises:
            SamplingError: some signal rows got no event inside the window within ``max_rounds``.
        """
        theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
        th = theta.to(_F64)
        n = th.shape[0]
        lo, hi = self.window
        is_signal = torch.rand(n, generator=generator, dtype=_F64) >= self.background_fraction
        # background: inverse CDF of the truncated exponential
        u = torch.rand(n, generator=generator, dtype=_F64)
        e_lo, e_hi = math.exp(-lo / self.slope), math.exp(-hi / self.slope)
        x = -self.slope * torch.log(e_lo - u * (e_lo - e_hi))
        m = x.clone()
        pending = draw_in_window(th[:, 0], th[:, 1] / 2, th[:, 2], self.window, torch.nonzero(is_signal)[:, 0], m, x,
                                 generator=generator, max_rounds=self.max_rounds)
        if pending.numel():
            raise SamplingError(
                f"ResonanceBackground.sample: {pending.numel()} signal rows got no event inside the window {self.window} "
                f"in {self.max_rounds} rounds (first row theta={theta[pending[0]].tolist()}); use a peak inside the "
                "window or a larger max_rounds."
            )
        latent = torch.stack([m, is_signal.to(_F64)], dim=1).to(theta.dtype)
        return Events(x=x.to(theta.dtype).unsqueeze(1), theta=theta, latent=latent)

    # ------------------------------------------------------------------ acceptance
    def acceptance(self, theta: Tensor) -> Tensor:
        r"""Signal window acceptance :math:`A(M, \Gamma, \sigma)`, ``(N,)`` for ``theta (N, 3)``; differentiable."""
        theta = torch.as_tensor(theta)
        return _Acceptance.apply(theta.to(_F64), self).to(theta.dtype)

    def _acceptance_value(self, theta: Tensor, chunk: int = 4096) -> Tensor:
        if theta.shape[0] > 1 and bool((theta == theta[:1]).all()):  # one point (fits): skip the sort of unique
            return self._acceptance_value(theta[:1]).expand(theta.shape[0])
        unique, inverse = torch.unique(theta, dim=0, return_inverse=True)
        nodes, weights = self._nodes.to(theta.device), self._weights.to(theta.device)
        out = []
        for start in range(0, unique.shape[0], chunk):
            th = unique[start : start + chunk]
            u = nodes.unsqueeze(0) - th[:, :1]
            out.append((voigt_log_pdf(u, th[:, 2:3], th[:, 1:2] / 2).exp() * weights).sum(dim=1))
        return torch.cat(out)[inverse]

    def _acceptance_gradient(self, theta: Tensor) -> Tensor:
        lo, hi = self.window
        mass, gamma, sigma = theta[:, 0], theta[:, 1] / 2, theta[:, 2]
        scale = sigma * math.sqrt(2.0)
        z_lo, z_hi = torch.complex(lo - mass, gamma) / scale, torch.complex(hi - mass, gamma) / scale
        w_lo, w_hi = faddeeva(z_lo), faddeeva(z_hi)
        norm = sigma * math.sqrt(2 * math.pi)
        d_mass = (w_lo.real - w_hi.real) / norm
        d_gamma = -(w_hi.imag - w_lo.imag) / norm
        dv_hi = -(z_hi * w_hi).real / (math.sqrt(math.pi) * sigma**2)
        dv_lo = -(z_lo * w_lo).real / (math.sqrt(math.pi) * sigma**2)
        d_sigma = sigma * (dv_hi - dv_lo)
        return torch.stack([d_mass, d_gamma / 2, d_sigma], dim=1)

    # ------------------------------------------------------------------ likelihoods
    def _log_background(self, x: Tensor) -> Tensor:
        return -x / self.slope - self._log_bkg_norm

    def _mix(self, log_signal: Tensor, log_background: Tensor) -> Tensor:
        f = self.background_fraction
        if f == 0.0:
            return log_signal
        return torch.logaddexp(math.log1p(-f) + log_signal, math.log(f) + log_background)

    def joint_log_prob(self, events: Events, theta: Tensor) -> Tensor:
        r"""log p(x, m, c|θ) (see the module docs), ``(N,)`` in the dtype of ``theta``; differentiable."""
        th = theta.to(_F64)
        x, m, c = events.x[:, 0].to(_F64), events.latent[:, 0].to(_F64), events.latent[:, 1].to(_F64)
        gamma, sigma = th[:, 1] / 2, th[:, 2]
        log_cauchy = torch.log(gamma) - torch.log(gamma**2 + (m - th[:, 0]) ** 2) - math.log(math.pi)
        log_smear = -0.5 * ((x - m) / sigma) ** 2 - torch.log(sigma) - 0.5 * _LOG_2PI
        f = self.background_fraction
        log_sig = math.log1p(-f) + log_cauchy + log_smear - torch.log(self.acceptance(th))
        log_bkg = (math.log(f) if f > 0 else -math.inf) + self._log_background(x)
        return torch.where(c > 0.5, log_sig, log_bkg).to(theta.dtype)

    def _inputs(self, x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x (N, 1)`` as a tensor, its float64 column ``(N,)`` and ``theta`` as float64 ``(N, 3)``."""
        x = torch.as_tensor(x)
        theta = torch.as_tensor(theta, dtype=x.dtype, device=x.device)
        return x, x[:, 0].to(_F64), theta.to(_F64).reshape(-1, 3).expand(x.shape[0], 3)

    def _log_signal(self, xx: Tensor, th: Tensor) -> Tensor:
        return voigt_log_pdf(xx - th[:, 0], th[:, 2], th[:, 1] / 2) - torch.log(self.acceptance(th))

    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Exact log p(x|θ) (signal Voigt + background mixture); −inf outside the window, ``(N,)``.

        Args:
            x: ``(N, 1)``.
            theta: ``(N, 3)`` or ``(3,)``.
        """
        x, xx, th = self._inputs(x, theta)
        log_p = self._mix(self._log_signal(xx, th), self._log_background(xx))
        return restrict_to_window(log_p, xx, self.window).to(x.dtype)

    # ------------------------------------------------------------------ the two processes
    def signal_log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Signal density alone, :math:`\log V(x - M;\sigma,\Gamma/2) - \log A(\theta)`, normalised in the window.

        Args:
            x: ``(N, 1)``.
            theta: ``(N, 3)`` or ``(3,)``.

        Returns:
            ``(N,)`` in the dtype of ``x``; −inf outside the window.
        """
        x, xx, th = self._inputs(x, theta)
        return restrict_to_window(self._log_signal(xx, th), xx, self.window).to(x.dtype)

    def background_log_prob(self, x: Tensor) -> Tensor:
        r"""Background density alone (the truncated exponential, independent of θ), ``(N,)`` for ``x (N, 1)``; −inf outside the window.

        Example:
            >>> sim = ResonanceBackground(slope=20.0)
            >>> x = torch.tensor([[90.0], [110.0], [120.0]], dtype=torch.float64)
            >>> log_b = sim.background_log_prob(x)
            >>> round(float(log_b[0] - log_b[1]), 12), float(log_b[2])  # (110 - 90) / 20; outside the window
            (1.0, -inf)
        """
        x = torch.as_tensor(x)
        xx = x[:, 0].to(_F64)
        return restrict_to_window(self._log_background(xx), xx, self.window).to(x.dtype)

    @staticmethod
    def is_signal(events: Events) -> Tensor:
        """Which events the simulator drew from the signal process (latent label c = 1), bool ``(N,)``."""
        return events.latent[:, 1] > 0.5

    def with_resolution(self, theta: Tensor, factor: float) -> Tensor:
        r"""``theta (3,)`` with the detector resolution :math:`\sigma_\mathrm{det}` multiplied by ``factor`` (float64).

        Raises:
            OutOfSupportError: the new point lies outside the parameter space; the message gives
                the new :math:`\sigma_\mathrm{det}`.
        """
        shifted = torch.as_tensor(theta).to(_F64).reshape(-1).clone()
        shifted[2] = shifted[2] * factor
        self.space.check(shifted.reshape(1, -1), argument=f"theta with sigma_det = {float(shifted[2]):.3f}")
        return shifted

    def score(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Exact score :math:`\nabla_\theta \log p(x|\theta)`, ``(N, 3)``, by autograd of :meth:`log_prob`."""
        return autograd_score(self.log_prob, x, theta, 3)

    def fisher_information(self, theta: Tensor | None = None) -> Tensor:
        r"""Per-event Fisher information :math:`E[t t^T]`, ``(3, 3)`` float64, at ``theta (3,)`` (default: reference).

        Integrated over the window with a composite Gauss–Legendre rule (panels of width σ_min).
        """
        point = self.space.reference if theta is None else torch.as_tensor(theta, dtype=_F64).reshape(-1)
        lo, hi = self.window
        nodes, weights = _gauss_legendre(lo, hi, float(self.space.low[2]))
        x = nodes.unsqueeze(1)
        th = point.to(_F64).expand(x.shape[0], 3)
        t = self.score(x, th)
        p = self.log_prob(x, th).exp()
        return torch.einsum("n,ni,nj->ij", weights * p, t, t)

    def config(self) -> dict:
        return {**super().config(), "background_fraction": self.background_fraction, "slope": self.slope, "window": list(self.window)}
