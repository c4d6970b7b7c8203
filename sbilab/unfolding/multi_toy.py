r"""A many-observable unfolding toy: six correlated observables, a nonlinear detector, a generator "tune".

Generator level. A latent :math:`y \in \mathbb R^6` is drawn from a two-component Gaussian
mixture whose weight, mean and width depend on a generator setting :math:`\theta`
(the simulation is :math:`\theta = 0`, the "data" :math:`\theta = 1`, so the truth of the data
is known):

.. math::
    y \sim \pi\,\mathcal N(\mu_A, 0.6^2 C_{0.5}) + (1-\pi)\,\mathcal N(\mu_B + 0.25\,\theta\,\delta,\
    (0.7(1 + 0.1\theta))^2 C_{-0.3}),\qquad \pi = 0.5 + 0.15\,\theta,

with :math:`(C_\rho)_{ij} = \rho^{|i-j|}`, :math:`\mu_A = (-0.6, -0.4, -0.5, 0, 0.4, -0.3)`,
:math:`\mu_B = (0.6, 0.5, 0.6, 0.3, -0.4, 0.5)`, :math:`\delta = (1, 1, 0, -1, 0, 1)`. The six
observables are nonlinear, correlated functions of it:

.. math::
    z = \bigl(y_0,\ e^{y_1/2},\ \sigma(1.5\,y_2),\ y_3 + 0.3\,y_0^2,\
    y_4 + 0.25\sin 2y_2,\ \mathrm{softplus}(1.5\,y_5)\bigr).

Detector level (:math:`\xi_i \sim \mathcal N(0,1)` independent):

.. math::
    x = \bigl(z_0 + 0.3\xi_0,\ z_1 e^{0.15\xi_1},\ \sigma(\mathrm{logit}\,z_2 + 0.4\xi_2),\
    z_3 + 0.1\tanh 2z_3 + 0.35\xi_3,\ z_4 + 0.25\xi_4 + 0.15\xi_0,\
    0.95 z_5 + 0.05 + 0.3\sqrt{z_5}\,\xi_5\bigr),

multiplicative, bounded, nonlinear and correlated smearing. Every event passes the generator
selection; it is detected with efficiency :math:`0.7 + 0.25\,\sigma(2(z_1 - 1))` (no fakes, no
background).

Example:
    >>> toy = MultiObservableToy()
    >>> sim = toy.simulation(500, generator=torch.Generator().manual_seed(0))
    >>> sim.gen.x.shape, toy.observables
    (torch.Size([500, 6]), ('linear', 'mass', 'fraction', 'curved', 'mixed', 'energy'))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..events import Events
from ..paired import PairedEvents
from .toys import ToyData

__all__ = ["MultiObservableToy"]

_MU_A = (-0.6, -0.4, -0.5, 0.0, 0.4, -0.3)
_MU_B = (0.6, 0.5, 0.6, 0.3, -0.4, 0.5)
_SHIFT = (1.0, 1.0, 0.0, -1.0, 0.0, 1.0)


def _ar_cholesky(rho: float, dim: int = 6) -> Tensor:
    i = torch.arange(dim, dtype=torch.float64)
    return torch.linalg.cholesky(rho ** (i[:, None] - i[None, :]).abs())


@dataclass(frozen=True)
class MultiObservableToy:
    """Six-observable toy (see the module docstring); ``sim_setting``/``data_setting`` are the θ of each.

    Attributes:
        sim_setting: Generator setting θ of the simulation.
        data_setting: Generator setting θ of the data.
    """

    sim_setting: float = 0.0
    data_setting: float = 1.0
    observables: tuple[str, ...] = ("linear", "mass", "fraction", "curved", "mixed", "energy")
    units: tuple[str, ...] = ("a.u.",) * 6

    def generate(self, n: int, setting: float, generator: torch.Generator | None = None) -> Tensor:
        """Generator-level observables ``(n, 6)`` at setting θ."""
        n = int(n)
        pi = 0.5 + 0.15 * setting
        comp_a = torch.rand(n, generator=generator, dtype=torch.float64) < pi
        eps = torch.randn(n, 6, generator=generator, dtype=torch.float64)
        mu_b = torch.tensor(_MU_B, dtype=torch.float64) + 0.25 * setting * torch.tensor(_SHIFT, dtype=torch.float64)
        y_a = torch.tensor(_MU_A, dtype=torch.float64) + 0.6 * eps @ _ar_cholesky(0.5).T
        y_b = mu_b + 0.7 * (1 + 0.1 * setting) * eps @ _ar_cholesky(-0.3).T
        y = torch.where(comp_a[:, None], y_a, y_b)
        return torch.stack([
            y[:, 0],
            torch.exp(0.5 * y[:, 1]),
            torch.sigmoid(1.5 * y[:, 2]),
            y[:, 3] + 0.3 * y[:, 0] ** 2,
            y[:, 4] + 0.25 * torch.sin(2 * y[:, 2]),
            torch.nn.functional.softplus(1.5 * y[:, 5]),
        ], 1)

    def detect(self, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Detector-level observables ``(n, 6)`` and the detection flags ``(n,)`` of generator-level ``z``."""
        xi = torch.randn(z.shape[0], 6, generator=generator, dtype=torch.float64)
        x = torch.stack([
            z[:, 0] + 0.3 * xi[:, 0],
            z[:, 1] * torch.exp(0.15 * xi[:, 1]),
            torch.sigmoid(torch.logit(z[:, 2]) + 0.4 * xi[:, 2]),
            z[:, 3] + 0.1 * torch.tanh(2 * z[:, 3]) + 0.35 * xi[:, 3],
            z[:, 4] + 0.25 * xi[:, 4] + 0.15 * xi[:, 0],
            0.95 * z[:, 5] + 0.05 + 0.3 * z[:, 5].sqrt() * xi[:, 5],
        ], 1)
        eff = 0.7 + 0.25 * torch.sigmoid(2 * (z[:, 1] - 1))
        detected = torch.rand(z.shape[0], generator=generator, dtype=torch.float64) < eff
        return x, detected

    def simulation(self, n: int, *, generator: torch.Generator | None = None) -> PairedEvents:
        """``n`` paired events at the simulation setting (undetected events' detector values are 0)."""
        z = self.generate(n, self.sim_setting, generator)
        x, detected = self.detect(z, generator)
        x = torch.where(detected[:, None], x, 0.0)
        return PairedEvents(Events.observed(z), Events.observed(x), pass_reco=detected)

    def data(self, n: int, *, generator: torch.Generator | None = None) -> ToyData:
        """Observed data from ``n`` events at the data setting, with their generator-level truth."""
        z = self.generate(n, self.data_setting, generator)
        x, detected = self.detect(z, generator)
        m = int(detected.sum())
        return ToyData(reco=x[detected], truth=z, is_fake=torch.zeros(m, dtype=torch.bool),
                       is_background=torch.zeros(m, dtype=torch.bool), rows=int(n))
