r"""The ideal (infinite-statistics, perfect-classifier) unfolding iterations, by quadrature.

With infinitely many events and a perfect classifier, OmniFold's step 1 learns the detector-level
ratio :math:`\omega_k(x)` exactly and step 2 averages it at fixed generator value; both together
are the continuous iterative Bayesian unfolding (1911.09107, eq. 3; D'Agostini in the limit of
infinitely fine bins). For a :class:`~sbilab.unfolding.toys.GaussianUnfoldingToy`, with
:math:`p_s` the simulation truth, :math:`\varepsilon` the efficiency, :math:`K(x|z)` the smearing,
:math:`f` the fake fraction, :math:`p_f` the fakes' and :math:`B` the background's detector-level
density, all as intensities per produced row:

.. math::
    S_k(x) = (1-f)\int \nu_k(z)\,p_s(z)\,\varepsilon(z)\,K(x|z)\,dz, \qquad
    F_k(x) = c_k\, f\, p_f(x), \\
    \omega_k(x) = \frac{D(x) - B(x)}{S_k(x) + F_k(x)}, \qquad
    \nu_{k+1}(z) = \nu_k(z)\int K(x|z)\,\omega_k(x)\,dx, \qquad
    c_{k+1} = c_k \int p_f(x)\,\omega_k(x)\,dx,

from :math:`\nu_0 = c_0 = 1`, where :math:`D - B = (1-b)[(1-f)\int p_d\,\varepsilon\,K\,dz + f p_f]`
is the data after exact background subtraction. :math:`\nu_{k+1}(z) = \nu_k(z)\,
E[\omega_k(x) \mid z, \text{detected}]` is the update of issue 12: the weight of undetected events
at :math:`z` is the mean weight of the detected ones there (efficiency correction). Fakes are
one extra "cause" whose normalisation :math:`c_k` is iterated like a bin of D'Agostini's
(RooUnfold's convention, the same as :func:`~sbilab.unfolding.ibu.iterative_unfold`; in
OmniFold: all fakes share one push weight, the weighted mean of their pulled weights). The
unfolded generator-level density after :math:`k` iterations is :math:`\propto \nu_k p_s`.

Integrals are trapezoid sums on a uniform grid wide enough for the Gaussian tails, which for
these smooth integrands converge faster than any power of the spacing.

For the minimal toy (Gaussians only) every iterate is Gaussian, and the moments follow in
closed form (:func:`gaussian_ideal_moments`): with :math:`g_k = s_k^2/(s_k^2+\sigma_s^2)`,

.. math::
    m_{k+1} = m_k + g_k(\mu_d - m_k), \qquad
    s_{k+1}^2 = g_k^2(\sigma_d^2 + \sigma_s^2) + g_k\sigma_s^2.

Example:
    >>> from sbilab.unfolding.toys import minimal_toy
    >>> out = ideal_iterations(minimal_toy(), iterations=4)
    >>> {k: [round(v, 3) for v in mv] for k, mv in out.moments_dict((1, 2, 4)).items()}
    {'1': [0.056, 0.909], '2': [0.013, 0.964], '4': [0.001, 0.995]}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..exceptions import ConfigError
from .ibu import iterative_unfold
from .response import Response
from .toys import GaussianUnfoldingToy

__all__ = ["IdealIterations", "ideal_iterations", "gaussian_ideal_moments", "ideal_stat_error"]


@dataclass(frozen=True)
class IdealIterations:
    """The ideal iterations of a toy.

    Attributes:
        grid: Generator-level grid ``(Z,)``.
        density: Normalised unfolded density on the grid after ``k = 0..K`` iterations, ``(K + 1, Z)``
            (``k = 0``: the simulation truth).
        moments: Mean and standard deviation of each, ``(K + 1, 2)``.
        fake_scale: :math:`c_k`, ``(K + 1,)``.
    """

    grid: Tensor
    density: Tensor
    moments: Tensor
    fake_scale: Tensor

    def moments_dict(self, iterations: Sequence[int] = (1, 2, 4)) -> dict[str, list[float]]:
        """``{"k": [mean, std]}`` for the given iterations (the benchmark's JSON layout)."""
        return {str(k): [float(v) for v in self.moments[k]] for k in iterations}


def _grids(toy: GaussianUnfoldingToy, points: int, width: float) -> tuple[Tensor, Tensor]:
    spread = max(toy.sim_std, toy.data_std, toy.fake_std, toy.background_std) + toy.smearing
    centre = max(abs(toy.sim_mean), abs(toy.data_mean), abs(toy.fake_mean), abs(toy.background_mean))
    half = centre + width * spread
    grid = torch.linspace(-half, half, points, dtype=torch.float64)
    return grid, grid


def _moments(grid: Tensor, density: Tensor) -> Tensor:
    p = density / density.sum(-1, keepdim=True)
    mean = (p * grid).sum(-1)
    std = (p * (grid - mean[..., None]) ** 2).sum(-1).sqrt()
    return torch.stack([mean, std], -1)


def _discretised(toy: GaussianUnfoldingToy, points: int, width: float):
    """Grid, spacing, kernel K(x|z) (Z, X), efficiency (Z,), sim truth (Z,), fakes (X,), data - background (X,)."""
    if points < 101 or width <= 0:
        raise ConfigError(f"quadrature needs points >= 101 and width > 0; got {points}, {width}.")
    z, x = _grids(toy, points, width)
    h = float(z[1] - z[0])
    kernel = toy.smearing_pdf(x[None, :], z[:, None])  # (Z, X)
    eff = toy.efficiency_at(z)
    f, b = toy.fake_fraction, toy.background_fraction
    sim = (1 - f) * toy.truth_pdf(z, data=False)
    fakes = f * toy.fake_pdf(x)
    signal_data = (1 - f) * ((toy.truth_pdf(z, data=True) * eff) @ kernel) * h
    data = (1 - b) * (signal_data + fakes)
    return z, h, kernel, eff, sim, fakes, data


def ideal_iterations(toy: GaussianUnfoldingToy, iterations: int = 4, *, points: int = 801, width: float = 10.0) -> IdealIterations:
    r"""Ideal continuous-IBU iterations of ``toy`` by quadrature.

    Args:
        toy: The toy (simulation and data truth, smearing, efficiency, fakes, background).
        iterations: Number of iterations ``K``.
        points: Grid points in z and in x.
        width: Half-width of the grids in units of the widest distribution (plus smearing).

    Returns:
        :class:`IdealIterations` for ``k = 0..K``.

    Raises:
        ConfigError: ``iterations < 1`` or a grid too coarse.
    """
    if iterations < 1:
        raise ConfigError(f"iterations must be >= 1; got {iterations}.")
    z, h, kernel, eff, sim, fakes, data = _discretised(toy, points, width)
    nu = torch.ones_like(z)
    c = 1.0
    densities, scales = [sim.clone()], [c]
    for _ in range(iterations):
        s = ((nu * sim * eff) @ kernel) * h
        omega = torch.where(s + c * fakes > 0, data / (s + c * fakes).clamp_min(1e-300), torch.zeros_like(s))
        nu = nu * (kernel @ omega) * h
        c = c * float((fakes @ omega) * h / max(float(fakes.sum() * h), 1e-300)) if toy.fake_fraction > 0 else c
        densities.append(nu * sim)
        scales.append(c)
    density = torch.stack(densities)
    density = density / (density.sum(-1, keepdim=True) * h)
    return IdealIterations(grid=z, density=density, moments=_moments(z, density), fake_scale=torch.tensor(scales, dtype=torch.float64))


def gaussian_ideal_moments(sim_mean: float, sim_std: float, data_mean: float, data_std: float, smearing: float,
                           iterations: int) -> list[tuple[float, float]]:
    r"""Closed-form ideal iterations of the all-Gaussian toy: ``[(mean, std)]`` for ``k = 0..K``."""
    m, s2, out = sim_mean, sim_std**2, [(sim_mean, sim_std)]
    r2 = smearing**2
    for _ in range(iterations):
        g = s2 / (s2 + r2)
        m, s2 = m + g * (data_mean - m), g * g * (data_std**2 + r2) + g * r2
        out.append((m, math.sqrt(s2)))
    return out


def ideal_stat_error(toy: GaussianUnfoldingToy, n_rows: int, iterations: int = 4, *, points: int = 401,
                     width: float = 10.0) -> Tensor:
    r"""Data-statistical error of the ideal iterations' mean and standard deviation.

    The quadrature grid is taken as a fine binning: the response is exact (infinite
    simulation), the data are the expected counts of ``n_rows`` produced rows with Poisson
    covariance (background included, then subtracted exactly), and the D'Agostini/Adye
    propagation of :func:`~sbilab.unfolding.ibu.iterative_unfold` (exact first-order
    derivatives through every iteration) gives the covariance of the unfolded density, which
    the gradients of the mean and standard deviation project onto
    :math:`(\sigma_\text{mean}, \sigma_\text{std})`.

    Returns:
        ``(K, 2)``: :math:`[\sigma_\text{mean}, \sigma_\text{std}]` after ``k = 1..K`` iterations.
    """
    z, h, kernel, eff, sim, fakes, data = _discretised(toy, points, width)
    matrix = (eff[:, None] * kernel).T * h  # (X, Z): R_ji = eps(z_i) K(x_j|z_i) dx
    response = Response(matrix=matrix, truth=sim * h, fakes=fakes * h if toy.fake_fraction > 0 else None)
    counts = n_rows * data * h
    background = n_rows * toy.background_fraction * toy.background_pdf(z) * h
    out = iterative_unfold(counts + background, response, iterations=iterations, background=background,
                           data_covariance=counts + background, response_covariance=False)
    n = out.unfolded  # (K, Z)
    total = n.sum(-1, keepdim=True)
    mean = (n * z).sum(-1, keepdim=True) / total
    var = (n * (z - mean) ** 2).sum(-1, keepdim=True) / total
    grad_mean = (z - mean) / total
    grad_std = ((z - mean) ** 2 - var) / (2 * var.sqrt() * total)
    grads = torch.stack([grad_mean, grad_std], -2)  # (K, 2, Z)
    cov = grads @ out.covariance_data @ grads.transpose(-1, -2)
    return cov.diagonal(dim1=-2, dim2=-1).sqrt()
