r"""Exact answers the anomaly tools are tested against: closed forms and quadrature.

* :func:`bivariate_normal_dcor2` — the population distance correlation of a bivariate normal
  with correlation ρ (Székely, Rizzo, Bakirov 2007, Theorem 7):

  .. math:: \mathrm{dCor}^2(\rho) = \frac{\rho \arcsin\rho + \sqrt{1-\rho^2} - \rho\arcsin(\rho/2)
            - \sqrt{4-\rho^2} + 1}{1 + \pi/3 - \sqrt 3}.

* :func:`bivariate_normal_abcd` — the four ABCD region probabilities of a standard bivariate
  normal cut at :math:`(c_x, c_y)` (scipy's ``multivariate_normal.cdf``) and the ABCD closure
  :math:`P_B P_C / (P_A P_D)`, which is 1 only for independent variables.
* :func:`gaussian_cut_sic` — the SIC :math:`\epsilon_s/\sqrt{\epsilon_b}` of a cut on one
  Gaussian observable, signal :math:`N(\mu, 1)` against background :math:`N(0, 1)`:
  :math:`\epsilon_s = \Phi(\mu - c)`, :math:`\epsilon_b = \Phi(-c)`.
* :func:`gaussian_optimal_sic` — the best achievable SIC for background :math:`N(0, I_d)` against
  signal :math:`N(\mu, \sigma^2 I_d)`: for :math:`\sigma < 1` the likelihood ratio is a decreasing
  function of :math:`\lVert x - c_0\rVert` with :math:`c_0 = \mu/(1-\sigma^2)`, so a cut is a ball and
  :math:`\epsilon_s = F_{\chi'^2_d}(r^2/\sigma^2; \lVert c_0-\mu\rVert^2/\sigma^2)`,
  :math:`\epsilon_b = F_{\chi'^2_d}(r^2; \lVert c_0\rVert^2)` (noncentral χ²); for :math:`\sigma = 1` a
  linear cut along μ (:func:`gaussian_cut_sic` with :math:`\lVert\mu\rVert`).

The SIC maxima are found by bounded scalar minimisation in the log of the cut variable to
relative precision 1e-10; ``min_background_efficiency`` restricts them to
:math:`\epsilon_b \ge` the floor, the way measured SIC curves are cut (few background events).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.stats import multivariate_normal, ncx2, norm

from ..exceptions import ConfigError

__all__ = ["bivariate_normal_dcor2", "AbcdProbabilities", "bivariate_normal_abcd", "OptimalSic", "gaussian_cut_sic",
           "gaussian_optimal_sic"]


def bivariate_normal_dcor2(rho: float) -> float:
    r"""Population :math:`\mathrm{dCor}^2` of a bivariate normal with correlation ``rho`` (Székely et al. 2007).

    Example:
        >>> [round(bivariate_normal_dcor2(r), 6) for r in (0.1, 0.5, 1.0)]
        [0.007944, 0.206231, 1.0]
    """
    r = float(rho)
    if not -1.0 <= r <= 1.0:
        raise ConfigError(f"bivariate_normal_dcor2: rho = {rho} must lie in [-1, 1].")
    r = abs(r)
    num = r * math.asin(r) + math.sqrt(1 - r * r) - r * math.asin(r / 2) - math.sqrt(4 - r * r) + 1
    return num / (1 + math.pi / 3 - math.sqrt(3))


@dataclass(frozen=True)
class AbcdProbabilities:
    """Probabilities of the four ABCD regions (A: both above their cuts, B: x above, y below, C: x below, y above, D: both below)."""

    p_a: float
    p_b: float
    p_c: float
    p_d: float

    @property
    def closure(self) -> float:
        r"""The ABCD prediction over the truth in A, :math:`P_B P_C / (P_A P_D)` (1 for independent variables)."""
        return self.p_b * self.p_c / (self.p_a * self.p_d)


def bivariate_normal_abcd(rho: float, cut_x: float = 1.0, cut_y: float = 1.0) -> AbcdProbabilities:
    r"""ABCD region probabilities of a standard bivariate normal with correlation ``rho``, by quadrature.

    Example:
        >>> round(bivariate_normal_abcd(0.5).closure, 4), round(bivariate_normal_abcd(0.0).p_a, 5)
        (0.1984, 0.02517)
    """
    r = float(rho)
    if not -1.0 < r < 1.0:
        raise ConfigError(f"bivariate_normal_abcd: rho = {rho} must lie in (-1, 1).")
    p_d = float(multivariate_normal(mean=[0.0, 0.0], cov=[[1.0, r], [r, 1.0]], abseps=1e-12, releps=1e-12).cdf([cut_x, cut_y]))
    fx, fy = float(norm.cdf(cut_x)), float(norm.cdf(cut_y))
    return AbcdProbabilities(p_a=1.0 - fx - fy + p_d, p_b=fy - p_d, p_c=fx - p_d, p_d=p_d)


@dataclass(frozen=True)
class OptimalSic:
    """Maximum of a SIC curve: the SIC, and the signal and background efficiencies where it is reached."""

    sic: float
    signal_efficiency: float
    background_efficiency: float


def _maximise(efficiencies, lo: float, hi: float, floor: float | None) -> OptimalSic:
    """Maximise eps_s / sqrt(eps_b) over a cut variable t in [lo, hi] (eps_b decreasing in t)."""
    def sic(t: float) -> float:
        s, b = efficiencies(t)
        return s / math.sqrt(b) if b > 0 else 0.0

    if floor is not None:
        # eps_b(t) >= floor  <=>  t <= t_floor; find t_floor by bisection
        a, z = lo, hi
        for _ in range(200):
            mid = 0.5 * (a + z)
            a, z = (mid, z) if efficiencies(mid)[1] >= floor else (a, mid)
        hi = a
    res = minimize_scalar(lambda t: -sic(t), bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    best = min((res.x, hi), key=lambda t: -sic(t))
    s, b = efficiencies(best)
    return OptimalSic(sic=s / math.sqrt(b), signal_efficiency=s, background_efficiency=b)


def _check_floor(floor: float | None) -> float | None:
    if floor is not None and not 0.0 < floor < 1.0:
        raise ConfigError(f"min_background_efficiency = {floor} must lie in (0, 1), or be None for no floor.")
    return floor


def gaussian_cut_sic(mean: float, *, min_background_efficiency: float | None = None) -> OptimalSic:
    r"""Maximum SIC of a cut :math:`x > c` for signal :math:`N(\mu, 1)` against background :math:`N(0, 1)`.

    Example:
        >>> best = gaussian_cut_sic(1.0)
        >>> round(best.sic, 6), round(best.background_efficiency, 3)
        (1.258729, 0.2)
    """
    mu = float(mean)
    if not mu > 0:
        raise ConfigError(f"gaussian_cut_sic: mean = {mean} must be > 0 (signal above background).")
    floor = _check_floor(min_background_efficiency)
    return _maximise(lambda c: (float(norm.cdf(mu - c)), float(norm.sf(c))), -10.0, mu + 40.0, floor)


def gaussian_optimal_sic(mean: Sequence[float], sigma: float, *, min_background_efficiency: float | None = None) -> OptimalSic:
    r"""Optimal (likelihood-ratio) maximum SIC for background :math:`N(0, I_d)` against signal :math:`N(\mu, \sigma^2 I_d)`.

    Args:
        mean: :math:`\mu`, ``(d,)``.
        sigma: Signal width :math:`0 < \sigma \le 1`.
        min_background_efficiency: Floor on :math:`\epsilon_b` (``None``: none).

    Example:
        >>> round(gaussian_optimal_sic([2.0, 2.0], 0.5).sic, 2)
        12.43
    """
    mu = np.asarray(mean, dtype=float).reshape(-1)
    s = float(sigma)
    floor = _check_floor(min_background_efficiency)
    if not 0.0 < s <= 1.0 or not np.linalg.norm(mu) > 0:
        raise ConfigError(f"gaussian_optimal_sic: needs 0 < sigma <= 1 (got {sigma}) and a non-zero mean (got {mu.tolist()}).")
    if s == 1.0:
        return gaussian_cut_sic(float(np.linalg.norm(mu)), min_background_efficiency=floor)
    d = mu.size
    c0 = mu / (1.0 - s * s)
    lam_s, lam_b = float(np.sum((c0 - mu) ** 2) / s**2), float(np.sum(c0**2))

    def efficiencies(t: float) -> tuple[float, float]:  # t = -log r^2: decreasing ball radius
        r2 = math.exp(-t)
        return float(ncx2.cdf(r2 / s**2, d, lam_s)), float(ncx2.cdf(r2, d, lam_b))

    return _maximise(efficiencies, -math.log(lam_b + 60.0 * (math.sqrt(lam_b) + d)), 30.0, floor)
