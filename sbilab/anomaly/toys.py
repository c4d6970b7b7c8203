r"""Exact toys for decorrelation and anomaly detection: every density, ratio and ABCD closure is known.

**Decorrelation toy** (:class:`DecorrelationToy`). Background: a standard normal "mass" and two
features, :math:`m \sim N(0,1)`, :math:`x_1 = \rho m + \sqrt{1-\rho^2}\,\varepsilon_1`,
:math:`x_2 = \varepsilon_2` (:math:`\varepsilon \sim N(0, I_2)`): :math:`x_1` is correlated with m
by exactly ρ, :math:`x_2` not at all, and :math:`x \sim N(0, I_2)` marginally. Signal:
:math:`x \sim N(\mu_s, I_2)` independent of :math:`m \sim N(m_s, \sigma_m^2)`. The optimal
classifier of x is linear, :math:`\log r(x) = \mu_s \cdot x - \lVert\mu_s\rVert^2/2`; on the
background its score is a standard normal correlated with m by :math:`\rho' = \rho\,\mu_{s,1}/\lVert\mu_s\rVert`,
so its sculpting and ABCD non-closure are those of a bivariate normal
(:func:`~sbilab.anomaly.references.bivariate_normal_abcd`). The best classifier independent of m
uses :math:`x_2` alone (rejection :math:`1/\Phi(-\mu_{s,2})` at 50 % signal efficiency against
:math:`1/\Phi(-\lVert\mu_s\rVert)` for the optimum): a perfectly decorrelating DisCo must land there.

**Anomaly toy** (:class:`AnomalyToy`). Background: m from a truncated exponential
:math:`p(m) \propto e^{-m/s}` on :math:`[m_\mathrm{min}, m_\mathrm{max}]`,
:math:`x_1 | m \sim N(\beta (m - m_\mathrm{ref}), 1)`, :math:`x_2 \sim N(0, 1)`: a feature
correlated with the mass (β = 0 removes it). Signal: :math:`m \sim N(m_s, \sigma_m^2)`,
:math:`x \sim N(\mu_s, \sigma_s^2 I_2)`. In the signal region the background's feature density
:math:`p_b(x | \mathrm{SR}) = \int_\mathrm{SR} p(m)\, p(x|m)\, dm / P_b(\mathrm{SR})` is computed by
64-point Gauss–Legendre quadrature, so the optimal anomaly score — the likelihood ratio
:math:`p_s(x)/p_b(x|\mathrm{SR})` — and its SIC are exact (for β = 0 the SIC is that of
:math:`N(0, I_2)` against :math:`N(\mu_s, \sigma_s^2 I_2)`, max 12.434 for μ_s = (2, 2), σ_s = 0.5).
:meth:`AnomalyToy.background_model` is the exact conditional :math:`p(x|m)` with
``sample(n, context, generator)`` and ``log_prob(x, context)``, the interface CATHODE's learned
background model has.

``noise_features`` appends standard normal features, identical for signal and background: they
leave every likelihood ratio unchanged and make weak supervision harder (as in CATHODE's studies).

Events carry ``x (N, 2 + noise_features)`` (``(N, 2)`` for the decorrelation toy), ``theta (N, 0)``, the mass as ``spectator (N, 1)`` and the truth
(1 = signal) as ``latent (N, 1)``; they carry no label, so the truth never reaches a classifier
by accident.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..events import Events
from ..exceptions import ConfigError, RegionError, ShapeMismatchError
from ..simulators.registry import register_toy
from .regions import MassWindow

__all__ = ["DecorrelationToy", "AnomalyToy", "ConditionalGaussianBackground"]

_F64 = torch.float64
_LOG_2PI = math.log(2 * math.pi)


def _normal_log_prob(x: Tensor, mean: Tensor, sigma: float) -> Tensor:
    """Sum over the last axis of log N(x; mean, sigma^2), ``(..., D) -> (...)``."""
    z = (x - mean) / sigma
    return (-0.5 * z * z - math.log(sigma) - 0.5 * _LOG_2PI).sum(-1)


def _events(x: Tensor, m: Tensor, truth: float) -> Events:
    n = x.shape[0]
    return Events(x=x, theta=x.new_zeros(n, 0), spectator=m.reshape(-1, 1), latent=x.new_full((n, 1), truth))


@dataclass(frozen=True)
class DecorrelationToy:
    """The decorrelation toy (see the module docstring): background features correlated with m by ``rho``."""

    rho: float = 0.7
    signal_mean: tuple[float, float] = (1.0, 1.0)
    signal_mass: tuple[float, float] = (1.5, 0.5)

    def __post_init__(self) -> None:
        if not -1.0 < self.rho < 1.0:
            raise ConfigError(f"DecorrelationToy: rho = {self.rho} must lie in (-1, 1).")
        if not self.signal_mass[1] > 0:
            raise ConfigError(f"DecorrelationToy: the signal mass width {self.signal_mass[1]} must be > 0.")

    def background(self, n: int, *, generator: torch.Generator | None = None) -> Events:
        """``n`` background events."""
        z = torch.randn(n, 3, generator=generator, dtype=_F64)
        m = z[:, 0]
        x = torch.stack([self.rho * m + math.sqrt(1 - self.rho**2) * z[:, 1], z[:, 2]], dim=1)
        return _events(x, m, 0.0)

    def signal(self, n: int, *, generator: torch.Generator | None = None) -> Events:
        """``n`` signal events."""
        z = torch.randn(n, 3, generator=generator, dtype=_F64)
        m = self.signal_mass[0] + self.signal_mass[1] * z[:, 0]
        x = z[:, 1:] + torch.tensor(self.signal_mean, dtype=_F64)
        return _events(x, m, 1.0)

    def log_ratio(self, x: Tensor) -> Tensor:
        r"""Exact :math:`\log p_s(x)/p_b(x) = \mu_s\cdot x - \lVert\mu_s\rVert^2/2`, ``(N, 2) -> (N,)``."""
        mu = torch.tensor(self.signal_mean, dtype=x.dtype, device=x.device)
        return x @ mu - 0.5 * float((mu * mu).sum())

    @property
    def score_mass_correlation(self) -> float:
        r"""Correlation :math:`\rho\,\mu_{s,1}/\lVert\mu_s\rVert` of the optimal score with m on the background."""
        return self.rho * self.signal_mean[0] / math.hypot(*self.signal_mean)

    def optimal_rejection(self, signal_efficiency: float = 0.5) -> tuple[float, float]:
        r"""Exact rejection :math:`1/\epsilon_b` at ``signal_efficiency``: ``(optimal classifier, best m-independent classifier)``."""
        from scipy.stats import norm

        q = float(norm.ppf(1 - signal_efficiency))
        norm_mu = math.hypot(*self.signal_mean)
        return 1.0 / float(norm.sf(norm_mu + q)), 1.0 / float(norm.sf(self.signal_mean[1] + q))


@dataclass(frozen=True)
class ConditionalGaussianBackground:
    r"""The exact background :math:`p(x|m)` of :class:`AnomalyToy`: :math:`x_1 \sim N(\beta(m - m_\mathrm{ref}), 1)`, :math:`x_2 \sim N(0, 1)`."""

    feature_slope: float
    reference_mass: float
    noise_features: int = 0

    def _mean(self, context: Tensor) -> Tensor:
        m = context.reshape(-1)
        zeros = torch.zeros(m.shape[0], 1 + self.noise_features, dtype=m.dtype, device=m.device)
        return torch.cat([(self.feature_slope * (m - self.reference_mass)).unsqueeze(1), zeros], dim=1)

    def sample(self, n: int, context: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of x, one per row of ``context (n, 1)`` (the mass), ``(n, 2 + noise_features)``."""
        context = torch.as_tensor(context, dtype=_F64)
        if context.reshape(-1).shape[0] != n:
            raise ShapeMismatchError(f"sample: context has {context.reshape(-1).shape[0]} rows for n = {n}; give one mass per draw.")
        return self._mean(context) + torch.randn(n, 2 + self.noise_features, generator=generator, dtype=_F64)

    def log_prob(self, x: Tensor, context: Tensor) -> Tensor:
        """:math:`\\log p(x|m)`, ``x (N, 2 + noise_features)``, ``context (N, 1)`` -> ``(N,)``."""
        return _normal_log_prob(x, self._mean(context).to(x.dtype), 1.0)


@register_toy("anomaly")
@dataclass(frozen=True)
class AnomalyToy:
    """The anomaly toy (see the module docstring). ``window`` is the signal region and sidebands it is analysed in."""

    mass_range: tuple[float, float] = (1.0, 5.0)
    background_slope: float = 1.0
    feature_slope: float = 0.5
    signal_mass: tuple[float, float] = (3.0, 0.1)
    signal_mean: tuple[float, float] = (2.0, 2.0)
    signal_sigma: float = 0.5
    window: MassWindow = MassWindow(2.8, 3.2, 0.4)
    noise_features: int = 0

    def __post_init__(self) -> None:
        if self.noise_features < 0:
            raise ConfigError(f"AnomalyToy: noise_features = {self.noise_features} must be >= 0.")
        lo, hi = self.mass_range
        if not lo < hi or not self.background_slope > 0 or not self.signal_sigma > 0 or not self.signal_mass[1] > 0:
            raise ConfigError("AnomalyToy: need mass_range lo < hi and positive background_slope, signal_sigma and signal mass width.")
        win_lo = self.window.lo - (self.window.sideband_width or 0.0)
        win_hi = self.window.hi + (self.window.sideband_width or 0.0)
        if not lo <= win_lo < win_hi <= hi:
            raise RegionError(f"AnomalyToy: the window [{win_lo:g}, {win_hi:g}] (signal region with sidebands) lies outside the "
                              f"mass range {self.mass_range} of the data; move the window inside it.")
        m_s, w = self.signal_mass
        if not lo + 6 * w <= m_s <= hi - 6 * w:
            raise ConfigError(f"AnomalyToy: the signal mass {m_s} ± 6 x {w} must lie inside mass_range {self.mass_range}.")

    # ------------------------------------------------------------------ probabilities of the signal region
    def _background_cdf(self, m: float) -> float:
        lo, hi = self.mass_range
        s = self.background_slope
        m = min(max(m, lo), hi)
        return -math.expm1(-(m - lo) / s) / -math.expm1(-(hi - lo) / s)

    def background_probability(self, lo: float, hi: float) -> float:
        """:math:`P_b(lo \\le m < hi)` of the background."""
        return self._background_cdf(hi) - self._background_cdf(lo)

    def signal_probability(self, lo: float, hi: float) -> float:
        """:math:`P_s(lo \\le m < hi)` of the signal."""
        from scipy.stats import norm

        m_s, w = self.signal_mass
        return float(norm.cdf((hi - m_s) / w) - norm.cdf((lo - m_s) / w))

    def signal_events_for(self, n_background: int, signal_fraction: float) -> int:
        """Signal events to add to ``n_background`` (whole mass range) so that S/B in the signal region is ``signal_fraction``."""
        if not signal_fraction >= 0:
            raise ConfigError(f"AnomalyToy: signal_fraction = {signal_fraction} must be >= 0.")
        w = self.window
        return int(round(signal_fraction * n_background * self.background_probability(w.lo, w.hi) / self.signal_probability(w.lo, w.hi)))

    # ------------------------------------------------------------------ sampling
    def background_model(self) -> ConditionalGaussianBackground:
        """The exact conditional background density p(x | m)."""
        return ConditionalGaussianBackground(self.feature_slope, self.signal_mass[0], self.noise_features)

    def background_mass(self, n: int, *, generator: torch.Generator | None = None, lo: float | None = None, hi: float | None = None) -> Tensor:
        """``n`` background masses (inverse CDF), restricted to ``[lo, hi)`` if given, ``(n,)``."""
        a = self._background_cdf(self.mass_range[0] if lo is None else lo)
        b = self._background_cdf(self.mass_range[1] if hi is None else hi)
        u = a + (b - a) * torch.rand(n, generator=generator, dtype=_F64)
        lo0, hi0 = self.mass_range
        s = self.background_slope
        return lo0 - s * torch.log1p(-u * -math.expm1(-(hi0 - lo0) / s))

    def background(self, n: int, *, generator: torch.Generator | None = None, lo: float | None = None, hi: float | None = None) -> Events:
        """``n`` background events (masses in ``[lo, hi)`` if given)."""
        m = self.background_mass(n, generator=generator, lo=lo, hi=hi)
        return _events(self.background_model().sample(n, m.reshape(-1, 1), generator), m, 0.0)

    def signal(self, n: int, *, generator: torch.Generator | None = None, in_signal_region: bool = False) -> Events:
        """``n`` signal events (all inside the signal region with ``in_signal_region``)."""
        m_s, w = self.signal_mass
        if in_signal_region:  # inverse CDF of the normal truncated to the signal region
            cdf = [0.5 * math.erfc(-(edge - m_s) / (w * math.sqrt(2))) for edge in (self.window.lo, self.window.hi)]
            u = cdf[0] + (cdf[1] - cdf[0]) * torch.rand(n, generator=generator, dtype=_F64)
            m = m_s + w * math.sqrt(2) * torch.erfinv(2 * u - 1)
        else:
            m = m_s + w * torch.randn(n, generator=generator, dtype=_F64)
        x = torch.tensor(self.signal_mean, dtype=_F64) + self.signal_sigma * torch.randn(n, 2, generator=generator, dtype=_F64)
        return _events(self._noise(x, generator), m, 1.0)

    def _noise(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """``x (n, 2)`` with ``noise_features`` standard normal columns appended (as the background has them)."""
        if not self.noise_features:
            return x
        return torch.cat([x, torch.randn(x.shape[0], self.noise_features, generator=generator, dtype=x.dtype)], dim=1)

    def dataset(self, n_background: int, signal_fraction: float, *, generator: torch.Generator | None = None) -> Events:
        """Background over the whole mass range plus signal with S/B = ``signal_fraction`` in the signal region."""
        parts = [self.background(n_background, generator=generator)]
        n_signal = self.signal_events_for(n_background, signal_fraction)
        if n_signal:
            parts.append(self.signal(n_signal, generator=generator))
        return Events.concatenate(parts)

    # ------------------------------------------------------------------ exact densities
    def background_log_prob_sr(self, x: Tensor) -> Tensor:
        r""":math:`\log p_b(x | \mathrm{SR})` by 64-point Gauss–Legendre quadrature over the signal region, ``(N, 2) -> (N,)``."""
        lo, hi = self.window.lo, self.window.hi
        nodes, weights = np.polynomial.legendre.leggauss(64)
        m = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)
        lo0, hi0 = self.mass_range
        s = self.background_slope
        p_m = np.exp(-(m - lo0) / s) / (s * -math.expm1(-(hi0 - lo0) / s))
        w = torch.as_tensor(0.5 * (hi - lo) * weights * p_m / self.background_probability(lo, hi), dtype=x.dtype)
        mean1 = torch.as_tensor(self.feature_slope * (m - self.signal_mass[0]), dtype=x.dtype)
        out = []
        for chunk in x.split(65536):
            log_p1 = -0.5 * (chunk[:, :1] - mean1) ** 2 - 0.5 * _LOG_2PI  # (n, 64)
            rest = _normal_log_prob(chunk[:, 1:], torch.zeros_like(chunk[:, 1:]), 1.0)
            out.append(torch.logsumexp(log_p1 + torch.log(w), dim=1) + rest)
        return torch.cat(out) if out else x.new_zeros(0)

    def signal_log_prob(self, x: Tensor) -> Tensor:
        """:math:`\\log p_s(x)`, ``(N, 2 + noise_features) -> (N,)``."""
        noise = _normal_log_prob(x[:, 2:], torch.zeros_like(x[:, 2:]), 1.0)
        return _normal_log_prob(x[:, :2], torch.tensor(self.signal_mean, dtype=x.dtype), self.signal_sigma) + noise

    def log_ratio_sr(self, x: Tensor) -> Tensor:
        r"""The optimal anomaly score in the signal region, :math:`\log p_s(x)/p_b(x|\mathrm{SR})`, ``(N,)``."""
        return self.signal_log_prob(x) - self.background_log_prob_sr(x)
