r"""The resonance toy as two stages: its truth level and its exact detector (the reference a surrogate must match).

:class:`~sbilab.simulators.toys.Resonance` draws the parton-level mass
:math:`m \sim \mathrm{Cauchy}(M, \Gamma/2)`, smears it, :math:`x = m + \sigma\epsilon`, and keeps
events inside the window :math:`x_\mathrm{lo} < x < x_\mathrm{hi}`. As stages (:mod:`sbilab.surrogates.stages`):

* :class:`ResonanceTruth`: :math:`p(m\mid M,\Gamma) = \mathrm{Cauchy}(m; M, \Gamma/2)`, with a composite
  Gauss–Legendre grid on the truth range :math:`[x_\mathrm{lo} - c\sigma, x_\mathrm{hi} + c\sigma]`
  (outside it the efficiency is below :math:`\Phi(-c)`, :math:`3\cdot10^{-14}` for the default :math:`c = 7.5`);
* :class:`ResonanceDetector`: efficiency
  :math:`\varepsilon(m) = \Phi\bigl(\tfrac{x_\mathrm{hi}-m}{\sigma}\bigr) - \Phi\bigl(\tfrac{x_\mathrm{lo}-m}{\sigma}\bigr)`
  and response :math:`p(x\mid m,\mathrm{pass}) = \mathcal N(x; m, \sigma)/\varepsilon(m)` on the window.

``Composition(ResonanceTruth(sim), ResonanceDetector(sim))`` is the toy itself (same sampling
procedure, same likelihood up to the grid's quadrature error, below 1e-6 in log p); replacing the
detector by a learned :class:`~sbilab.surrogates.stage.StageSurrogate` gives the surrogate simulator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..exceptions import ConfigError
from ..simulators.space import ParameterSpace
from ..simulators.toys import Resonance

__all__ = ["ResonanceTruth", "ResonanceDetector", "log_interval_probability"]

_LOG_2PI = math.log(2 * math.pi)


def _gauss_legendre(lo: float, hi: float, width: float, order: int) -> tuple[Tensor, Tensor]:
    """Composite Gauss–Legendre nodes ``(K,)`` and weights ``(K,)`` (float64) with panels no wider than ``width``."""
    panels = max(1, math.ceil((hi - lo) / width))
    t, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(lo, hi, panels + 1)
    half = (edges[1:] - edges[:-1])[:, None] / 2
    nodes = ((edges[1:] + edges[:-1])[:, None] / 2 + half * t).ravel()
    return torch.from_numpy(nodes), torch.from_numpy((half * w).ravel())


def log_interval_probability(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`\log[\Phi(b) - \Phi(a)]` for ``a < b`` elementwise, accurate in both tails (through ``log_ndtr``).

    Example:
        >>> round(float(log_interval_probability(torch.tensor([-40.0], dtype=torch.float64), torch.tensor([-38.0], dtype=torch.float64))), 3)
        -726.557
    """
    upper = a > 0  # both in the upper tail: use the mirrored interval (-b, -a)
    lo, hi = torch.where(upper, -b, a), torch.where(upper, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + torch.log1p(-torch.exp(torch.special.log_ndtr(lo) - log_hi))


class ResonanceTruth:
    r"""Truth level of the resonance toy: :math:`m \sim \mathrm{Cauchy}(M, \Gamma/2)`.

    Args:
        sim: The toy (its space, window and resolution); default ``Resonance()``.
        cover: The truth range is the window widened by ``cover`` detector resolutions on each side.
        panel: Width of the grid's quadrature panels (default: the resolution σ; with ``order = 8``
            the marginal likelihood of the exact stages matches the toy's to 1e-6).
        order: Gauss–Legendre points per panel.

    Example:
        >>> truth = ResonanceTruth()
        >>> nodes, log_w = truth.truth_grid()
        >>> nodes.shape[1], round(float(log_w.exp().sum()), 6)    # the grid spans [70, 130]
        (1, 60.0)
    """

    truth_names = ("m",)

    def __init__(self, sim: Resonance | None = None, *, cover: float = 7.5, panel: float | None = None, order: int = 8) -> None:
        sim = Resonance() if sim is None else sim
        if not cover > 0 or (panel is not None and not panel > 0) or order < 2:
            raise ConfigError(f"ResonanceTruth: need cover > 0, panel > 0 and order >= 2; got {cover}, {panel}, {order}.")
        self.space: ParameterSpace = sim.space
        lo, hi = sim.window
        self.truth_range = (lo - cover * sim.sigma_det, hi + cover * sim.sigma_det)
        self.panel = sim.sigma_det if panel is None else float(panel)
        self.order = int(order)

    def sample_truth(self, theta: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``m (N, 1)`` float64 for ``theta (N, 2)``, by inversion of the Cauchy CDF."""
        th = torch.as_tensor(theta).to(torch.float64)
        u = torch.rand(th.shape[0], generator=generator, dtype=torch.float64)
        return (th[:, 0] + th[:, 1] / 2 * torch.tan(math.pi * (u - 0.5))).unsqueeze(1)

    def truth_log_prob(self, truth: Tensor, theta: Tensor) -> Tensor:
        r""":math:`\log\mathrm{Cauchy}(m; M, \Gamma/2)`, ``(N,)`` for ``truth (N, 1)``, ``theta (N, 2)``; differentiable in θ."""
        m = truth[..., 0]
        gamma = theta[..., 1] / 2
        return torch.log(gamma) - torch.log(gamma**2 + (m - theta[..., 0]) ** 2) - math.log(math.pi)

    def truth_grid(self) -> tuple[Tensor, Tensor]:
        """Composite Gauss–Legendre nodes ``(K, 1)`` and log weights ``(K,)`` over the truth range."""
        nodes, weights = _gauss_legendre(*self.truth_range, self.panel, self.order)
        return nodes.unsqueeze(1), weights.log()


class ResonanceDetector:
    r"""The exact detector of the resonance toy: Gaussian smearing :math:`\sigma` and the window selection.

    Args:
        sim: The toy (window and resolution); default ``Resonance()``.

    Example:
        >>> det = ResonanceDetector()
        >>> round(float(det.log_efficiency(torch.tensor([[115.0]], dtype=torch.float64)).exp()), 6)  # half the smear leaves
        0.5
    """

    reco_names = ("x",)

    def __init__(self, sim: Resonance | None = None) -> None:
        sim = Resonance() if sim is None else sim
        self.sigma = sim.sigma_det
        self.window = sim.window

    def _bounds(self, m: Tensor) -> tuple[Tensor, Tensor]:
        lo, hi = self.window
        return (lo - m) / self.sigma, (hi - m) / self.sigma

    def log_efficiency(self, truth: Tensor, theta: Tensor | None = None) -> Tensor:
        r""":math:`\log[\Phi((x_\mathrm{hi}-m)/\sigma) - \Phi((x_\mathrm{lo}-m)/\sigma)]`, ``(N,)`` float64."""
        a, b = self._bounds(torch.as_tensor(truth)[:, 0].to(torch.float64))
        return log_interval_probability(a, b)

    def log_prob(self, reco: Tensor, truth: Tensor, theta: Tensor | None = None) -> Tensor:
        r""":math:`\log\mathcal N(x; m, \sigma) - \log\varepsilon(m)` inside the window, :math:`-\infty` outside, ``(N,)`` float64."""
        x = torch.as_tensor(reco)[:, 0].to(torch.float64)
        m = torch.as_tensor(truth)[:, 0].to(torch.float64)
        value = -0.5 * ((x - m) / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * _LOG_2PI - self.log_efficiency(truth)
        lo, hi = self.window
        return torch.where((x > lo) & (x < hi), value, torch.full_like(value, -math.inf))

    def sample_reco(self, truth: Tensor, theta: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """Draws of the window-truncated Gaussian around each truth, ``(N, 1)`` float64 (inverse CDF)."""
        m = torch.as_tensor(truth)[:, 0].to(torch.float64)
        a, b = self._bounds(m)
        u = torch.rand(m.shape[0], generator=generator, dtype=torch.float64)
        lo, hi = torch.special.ndtr(a), torch.special.ndtr(b)
        z = torch.special.ndtri(lo + u * (hi - lo)).clamp(a, b)
        return (m + self.sigma * z).unsqueeze(1)

    def sample(self, truth: Tensor, theta: Tensor | None = None, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The physical response: ``x = m + σ ε`` ``(N, 1)`` float64 and whether it lies inside the window ``(N,)``."""
        m = torch.as_tensor(truth)[:, 0].to(torch.float64)
        x = m + self.sigma * torch.randn(m.shape[0], generator=generator, dtype=torch.float64)
        lo, hi = self.window
        return x.unsqueeze(1), (x > lo) & (x < hi)
