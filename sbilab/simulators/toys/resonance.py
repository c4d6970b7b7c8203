r"""Resonance toy: a Breit–Wigner line shape smeared by a detector, inside a fiducial window.

.. math::
    m \sim \mathrm{Cauchy}(M, \Gamma/2), \qquad x = m + \epsilon,\ \epsilon \sim \mathcal N(0, \sigma^2),
    \qquad \text{kept only if } x_\mathrm{lo} < x < x_\mathrm{hi}.

The parton-level mass m is the latent variable. The joint and marginal likelihoods are

.. math::
    p(x, m | M, \Gamma) = \frac{\mathrm{Cauchy}(m; M, \Gamma/2)\, \mathcal N(x; m, \sigma)}{A(M, \Gamma)},
    \qquad p(x | M, \Gamma) = \frac{V(x - M; \sigma, \Gamma/2)}{A(M, \Gamma)},

with the Voigt profile :math:`V(u; \sigma, \gamma) = \mathrm{Re}\, w(z) / (\sigma\sqrt{2\pi})`,
:math:`z = (u + i\gamma)/(\sigma\sqrt 2)`, :math:`w` the Faddeeva function, and the window
acceptance :math:`A = \int_{x_\mathrm{lo}}^{x_\mathrm{hi}} V(x - M)\,dx`.

Everything is written in torch and is differentiable in θ, so exact scores come from autograd:
:math:`w` uses Weideman's rational approximation (SIAM J. Numer. Anal. 31 (1994) 1497) with 40
terms, accurate to ~1e-14 relative for :math:`\mathrm{Im}\, z > 0.3`; the acceptance uses a
composite 16-point Gauss–Legendre rule over the window (panels no wider than 5σ), accurate to
~1e-15. At M = 100, Γ = 5, σ = 2, window (85, 115): A = 0.8929820109, p(103) = 0.067734165 and,
for 1000 events, Cramér–Rao bounds σ(M) = 0.1434, σ(Γ) = 0.3238.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ...events import Events
from ...exceptions import ParameterSpaceError, SamplingError
from ..base import Simulator, autograd_score
from ..registry import register_toy
from ..space import ParameterSpace

__all__ = ["Resonance", "faddeeva", "voigt_log_pdf", "draw_in_window"]

_LOG_2PI = math.log(2 * math.pi)
_N_WEIDEMAN = 40


def _weideman_coefficients(n: int) -> tuple[np.ndarray, float]:
    """Coefficients of Weideman's n-term rational approximation of w(z), highest power first."""
    m = 2 * n
    k = np.arange(-m + 1, m)
    length = math.sqrt(n / math.sqrt(2.0))
    t = length * np.tan(k * math.pi / (2 * m))
    f = np.concatenate([[0.0], np.exp(-t**2) * (length**2 + t**2)])
    a = np.real(np.fft.fft(np.fft.fftshift(f))) / (2 * m)
    return a[1:n + 1][::-1].copy(), length


_COEFFS, _L = _weideman_coefficients(_N_WEIDEMAN)


def faddeeva(z: Tensor) -> Tensor:
    r"""Faddeeva function :math:`w(z) = e^{-z^2}\operatorname{erfc}(-iz)` for ``Im z > 0``, differentiable.

    Weideman's rational approximation with 40 terms: relative error ~1e-14 for
    ``Im z >= 0.3``; it degrades towards the real axis (not needed here).

    Args:
        z: Complex tensor of any shape (complex128 recommended).

    Example:
        >>> z = torch.tensor([1.0 + 1.0j], dtype=torch.complex128)
        >>> round(faddeeva(z).real.item(), 12)  # scipy.special.wofz(1+1j).real
        0.304744205257
    """
    length = torch.as_tensor(_L, dtype=z.real.dtype, device=z.device)
    denom = length - 1j * z
    big_z = (length + 1j * z) / denom
    poly = torch.zeros_like(z)
    for a in _COEFFS:  # Horner, highest power first
        poly = poly * big_z + float(a)
    return 2 * poly / denom**2 + (1 / math.sqrt(math.pi)) / denom


def voigt_log_pdf(u: Tensor, sigma: float | Tensor, gamma: Tensor) -> Tensor:
    r"""log of the Voigt profile :math:`V(u; \sigma, \gamma)` (Cauchy of half width γ ⊗ Gaussian σ).

    Args:
        u: Offsets from the peak, any shape (real).
        sigma: Gaussian width (scalar).
        gamma: Cauchy half width at half maximum, broadcastable to ``u``; must be > 0.
    """
    dtype = torch.promote_types(u.dtype, torch.float64)
    sigma_t = torch.as_tensor(sigma, dtype=dtype, device=u.device)
    z = torch.complex(u.to(dtype), torch.as_tensor(gamma, dtype=dtype, device=u.device).expand_as(u)) / (sigma_t * math.sqrt(2.0))
    return torch.log(faddeeva(z).real) - torch.log(sigma_t) - 0.5 * _LOG_2PI


def _gauss_legendre(lo: float, hi: float, max_width: float, order: int = 16) -> tuple[Tensor, Tensor]:
    """Composite Gauss–Legendre nodes and weights on [lo, hi] with panels no wider than max_width."""
    panels = max(1, math.ceil((hi - lo) / max_width))
    t, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(lo, hi, panels + 1)
    half = (edges[1:] - edges[:-1])[:, None] / 2
    nodes = ((edges[1:] + edges[:-1])[:, None] / 2 + half * t).ravel()
    weights = (half * w).ravel()
    return torch.from_numpy(nodes), torch.from_numpy(weights)


def restrict_to_window(log_p: Tensor, x: Tensor, window: tuple[float, float]) -> Tensor:
    """``log_p (N,)`` inside the open fiducial window on ``x (N,)``, ``-inf`` outside."""
    lo, hi = window
    return torch.where((x > lo) & (x < hi), log_p, torch.full_like(log_p, -math.inf))


def draw_in_window(mass: Tensor, half_width: Tensor, sigma: Tensor, window: tuple[float, float], rows: Tensor,
                   m: Tensor, x: Tensor, *, generator: torch.Generator | None, max_rounds: int) -> Tensor:
    r"""Accept–reject draws of :math:`m \sim \mathrm{Cauchy}(M, \gamma)`, :math:`x = m + \sigma\epsilon` inside the open window.

    Fills ``m[rows]`` and ``x[rows]`` in place (float64, ``(N,)``), redrawing only the rows still
    outside the window, at most ``max_rounds`` times; ``mass``, ``half_width`` γ = Γ/2 and
    ``sigma`` are per row, ``(N,)``. Returns the rows that got no event (empty on success).
    """
    lo, hi = window
    pending = rows
    for _ in range(max_rounds):
        if pending.numel() == 0:
            break
        k = pending.numel()
        u = torch.rand(k, generator=generator, dtype=torch.float64)
        m_new = mass[pending] + half_width[pending] * torch.tan(math.pi * (u - 0.5))
        x_new = m_new + sigma[pending] * torch.randn(k, generator=generator, dtype=torch.float64)
        ok = (x_new > lo) & (x_new < hi)
        m[pending[ok]], x[pending[ok]] = m_new[ok], x_new[ok]
        pending = pending[~ok]
    return pending


class _Acceptance(torch.autograd.Function):
    """A(θ) by quadrature in the forward pass, closed-form (differentiable) gradient in the backward.

    Generic over toys that define ``_acceptance_value(theta) -> (N,)`` and
    ``_acceptance_gradient(theta) -> (N, P)`` (also used by ``ResonanceBackground``).
    """

    @staticmethod
    def forward(ctx, theta: Tensor, sim: "Resonance") -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(theta)
        ctx.sim = sim
        with torch.no_grad():
            return sim._acceptance_value(theta)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (theta,) = ctx.saved_tensors
        return grad_out.unsqueeze(1) * ctx.sim._acceptance_gradient(theta), None


@register_toy("resonance")
class Resonance(Simulator):
    r"""Breit–Wigner resonance with Gaussian detector smearing and a fiducial window.

    Parameters θ = (M, Γ): pole mass and full width. One observable x (reconstructed mass),
    one latent m (parton-level mass). Likelihoods are computed in float64 and returned in the
    dtype of ``theta``.

    Args:
        sigma_det: Detector resolution σ.
        window: Fiducial window (lo, hi) on x.
        low, high: Bounds of (M, Γ); Γ must stay > 0.
        reference: Reference point (default (100, 5)).
        max_rounds: Bound on the accept–reject rounds of :meth:`sample`.

    Example:
        >>> sim = Resonance()
        >>> round(sim.acceptance(torch.tensor([[100.0, 5.0]], dtype=torch.float64)).item(), 10)
        0.8929820109
        >>> ev = sim.simulate(4, generator=torch.Generator().manual_seed(0))
        >>> bool(((ev.x > 85) & (ev.x < 115)).all())
        True
    """

    observable_names = ("x",)

    def __init__(
        self,
        sigma_det: float = 2.0,
        *,
        window: tuple[float, float] = (85.0, 115.0),
        low: tuple[float, float] = (95.0, 2.0),
        high: tuple[float, float] = (105.0, 8.0),
        reference: tuple[float, float] = (100.0, 5.0),
        max_rounds: int = 200,
    ) -> None:
        if not sigma_det > 0:
            raise ParameterSpaceError(f"Resonance: sigma_det must be > 0, got {sigma_det}.")
        lo, hi = (float(v) for v in window)
        if not lo < hi:
            raise ParameterSpaceError(f"Resonance: window must be (lo, hi) with lo < hi, got {window}.")
        if not low[1] > 0:
            raise ParameterSpaceError(f"Resonance: the lower bound of Gamma must be > 0, got {low[1]}.")
        self.sigma_det = float(sigma_det)
        self.window = (lo, hi)
        self.max_rounds = int(max_rounds)
        self.space = ParameterSpace(("M", "Gamma"), low=low, high=high, reference=reference)
        self._nodes, self._weights = _gauss_legendre(lo, hi, 5.0 * self.sigma_det)

    # ------------------------------------------------------------------ sampling
    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Events:
        """One accepted event per row of ``theta (N, 2)``; latent m ``(N, 1)``, x ``(N, 1)``.

        Candidates are drawn for all rows still lacking an event, at most ``max_rounds`` times.

        Raises:
            SamplingError: some rows got no event inside the window within ``max_rounds``.
        """
        theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
        th = theta.to(torch.float64)
        n = th.shape[0]
        m = torch.empty(n, dtype=torch.float64)
        x = torch.empty(n, dtype=torch.float64)
        sigma = torch.full((n,), self.sigma_det, dtype=torch.float64)
        pending = draw_in_window(th[:, 0], th[:, 1] / 2, sigma, self.window, torch.arange(n), m, x,
                                 generator=generator, max_rounds=self.max_rounds)
        if pending.numel():
            raise SamplingError(
                f"Resonance.sample: {pending.numel()} of {n} rows got no event inside the window {self.window} "
                f"in {self.max_rounds} rounds (first row theta={theta[pending[0]].tolist()}). Use parameters whose "
                "peak lies inside the window, a wider window, or a larger max_rounds."
            )
        dtype = theta.dtype
        return Events(x=x.to(dtype).unsqueeze(1), theta=theta, latent=m.to(dtype).unsqueeze(1))

    # ------------------------------------------------------------------ likelihoods
    def acceptance(self, theta: Tensor) -> Tensor:
        r"""Window acceptance :math:`A(M, \Gamma)`, ``(N,)`` for ``theta (N, 2)``; differentiable.

        The value comes from the quadrature (rows with identical θ computed once); its
        gradient from the closed forms :math:`\partial_M A = V(x_\mathrm{lo}-M) - V(x_\mathrm{hi}-M)`
        and :math:`\partial_\gamma A = -\mathrm{Im}[w(z_\mathrm{hi}) - w(z_\mathrm{lo})]/(\sigma\sqrt{2\pi})`,
        so scores need no graph through the quadrature (and second derivatives work).
        """
        theta = torch.as_tensor(theta)
        return _Acceptance.apply(theta.to(torch.float64), self).to(theta.dtype)

    def _acceptance_value(self, theta: Tensor, chunk: int = 4096) -> Tensor:
        unique, inverse = torch.unique(theta, dim=0, return_inverse=True)
        nodes = self._nodes.to(theta.device)
        weights = self._weights.to(theta.device)
        out = []
        for start in range(0, unique.shape[0], chunk):
            th = unique[start:start + chunk]
            u = nodes.unsqueeze(0) - th[:, :1]
            out.append((voigt_log_pdf(u, self.sigma_det, th[:, 1:2] / 2).exp() * weights).sum(dim=1))
        return torch.cat(out)[inverse]

    def _acceptance_gradient(self, theta: Tensor) -> Tensor:
        lo, hi = self.window
        sigma = self.sigma_det
        mass, gamma = theta[:, 0], theta[:, 1] / 2
        z_lo = torch.complex(lo - mass, gamma) / (sigma * math.sqrt(2.0))
        z_hi = torch.complex(hi - mass, gamma) / (sigma * math.sqrt(2.0))
        w_lo, w_hi = faddeeva(z_lo), faddeeva(z_hi)
        norm = sigma * math.sqrt(2 * math.pi)
        d_mass = (w_lo.real - w_hi.real) / norm
        d_gamma = -(w_hi.imag - w_lo.imag) / norm
        return torch.stack([d_mass, d_gamma / 2], dim=1)

    def joint_log_prob(self, events: Events, theta: Tensor) -> Tensor:
        r"""log p(x, m|θ) = log Cauchy(m; M, Γ/2) + log N(x; m, σ) − log A(M, Γ), ``(N,)``."""
        th = theta.to(torch.float64)
        m = events.latent[:, 0].to(torch.float64)
        x = events.x[:, 0].to(torch.float64)
        gamma = th[:, 1] / 2
        log_cauchy = torch.log(gamma) - torch.log(gamma**2 + (m - th[:, 0]) ** 2) - math.log(math.pi)
        log_smear = -0.5 * ((x - m) / self.sigma_det) ** 2 - math.log(self.sigma_det) - 0.5 * _LOG_2PI
        return (log_cauchy + log_smear - torch.log(self.acceptance(th))).to(theta.dtype)

    def log_prob(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Exact log p(x|θ) = log V(x − M; σ, Γ/2) − log A(M, Γ); −inf outside the window, ``(N,)``.

        Args:
            x: ``(N, 1)``.
            theta: ``(N, 2)`` or ``(2,)``.
        """
        x = torch.as_tensor(x)
        theta = torch.as_tensor(theta, dtype=x.dtype, device=x.device)
        th = theta.to(torch.float64).reshape(-1, 2).expand(x.shape[0], 2)
        xx = x[:, 0].to(torch.float64)
        log_p = voigt_log_pdf(xx - th[:, 0], self.sigma_det, th[:, 1] / 2) - torch.log(self.acceptance(th))
        return restrict_to_window(log_p, xx, self.window).to(x.dtype)

    def score(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Exact score :math:`\nabla_\theta \log p(x|\theta)`, ``(N, 2)``, by autograd of :meth:`log_prob`."""
        return autograd_score(self.log_prob, x, theta, 2)

    def fisher_information(self, theta: Tensor | None = None) -> Tensor:
        r"""Per-event Fisher information :math:`E[t t^T]`, ``(2, 2)`` float64, at ``theta (2,)``.

        Integrated over the window with a composite Gauss–Legendre rule (panels of width σ).
        Default point: the reference.
        """
        point = self.space.reference if theta is None else torch.as_tensor(theta, dtype=torch.float64).reshape(-1)
        lo, hi = self.window
        nodes, weights = _gauss_legendre(lo, hi, self.sigma_det)
        x = nodes.unsqueeze(1)
        th = point.to(torch.float64).expand(x.shape[0], 2)
        t = self.score(x, th)
        p = self.log_prob(x, th).exp()
        return torch.einsum("n,ni,nj->ij", weights * p, t, t)

    def config(self) -> dict:
        return {**super().config(), "sigma_det": self.sigma_det, "window": list(self.window)}
