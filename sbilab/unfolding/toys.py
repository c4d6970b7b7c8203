r"""Gaussian unfolding toys with paired generator/detector events, efficiency, fakes and background.

Every row of a simulation is one produced event, drawn as follows (``D = 1``):

* with probability ``fake_fraction`` it is a **fake**: an event from outside the generator-level
  (fiducial) selection that migrates into the detector-level one: ``pass_gen = False``,
  ``pass_reco = True``, detector value :math:`x \sim \mathcal N(\mu_f, \sigma_f)`;
* otherwise it is a fiducial event: :math:`z \sim \mathcal N(\mu, \sigma)` (``pass_gen = True``),
  detected with the smooth **efficiency** :math:`\varepsilon(z) = \mathrm{clip}(\varepsilon_0 +
  \varepsilon_1 \tanh z,\ 0,\ 1)` (``pass_reco``) and then smeared,
  :math:`x = z + \sigma_s\,\xi`, :math:`\xi \sim \mathcal N(0, 1)`.

Values behind a failed selection (the generator value of a fake, the detector value of an
undetected event) are set to 0 and carry no meaning: always use the pass flags.

Observed **data** are drawn the same way at the data's truth, and each data row is instead a
**background** event (detector level only, :math:`x \sim \mathcal N(\mu_b, \sigma_b)`) with
probability ``background_fraction``. Only rows passing the detector selection are observed; the
generator values of the data's fiducial events are returned too, as the truth unfolding must
recover. A background Monte Carlo sample carries weights normalised to the expected background
count of a data set of a given size.

The two toys of issue 12 (arXiv:1911.09107's Gaussian example, extended):

* :func:`minimal_toy`: simulation truth :math:`\mathcal N(0.2, 0.8)`, data truth
  :math:`\mathcal N(0, 1)`, smearing :math:`\sigma_s = 0.5`; full efficiency, no fakes, no background.
* :func:`full_toy`: simulation truth :math:`\mathcal N(0, 1)`, data truth :math:`\mathcal N(0.2, 0.8)`,
  :math:`\sigma_s = 0.5`, efficiency :math:`0.9 + 0.08\tanh z` (90 % on the simulation's truth,
  between 82 % and 98 %), fakes 10 % of the rows with :math:`x \sim \mathcal N(0.5, 1)`,
  background 10 % of the data rows with :math:`x \sim \mathcal N(0, 1.2)`.

Example:
    >>> toy = full_toy()
    >>> sim = toy.simulation(1000, generator=torch.Generator().manual_seed(0))
    >>> sim.gen.shape, sim.reco.shape, sim.pass_gen.dtype, bool((sim.pass_gen | sim.pass_reco).all())
    (torch.Size([1000, 1]), torch.Size([1000, 1]), torch.bool, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..exceptions import ConfigError, ShapeMismatchError

__all__ = ["PairedSample", "ToyData", "GaussianUnfoldingToy", "minimal_toy", "full_toy"]


@dataclass(frozen=True)
class PairedSample:
    """Simulated events at generator and detector level, row by row.

    Attributes:
        gen: Generator-level observables ``(N, D)`` (meaningless where ``pass_gen`` is False).
        reco: Detector-level observables ``(N, D)`` (meaningless where ``pass_reco`` is False).
        pass_gen: Generator-level selection ``(N,)`` bool.
        pass_reco: Detector-level selection ``(N,)`` bool.
        weights: Event weights ``(N,)``.
    """

    gen: Tensor
    reco: Tensor
    pass_gen: Tensor
    pass_reco: Tensor
    weights: Tensor

    def __post_init__(self) -> None:
        n = self.gen.shape[0]
        for name in ("reco", "pass_gen", "pass_reco", "weights"):
            if getattr(self, name).shape[0] != n:
                raise ShapeMismatchError(f"PairedSample.{name} has {getattr(self, name).shape[0]} rows, gen has {n}.")

    def __len__(self) -> int:
        return self.gen.shape[0]


@dataclass(frozen=True)
class ToyData:
    """Observed toy data and the truth it comes from.

    Attributes:
        reco: Detector-level values of every observed event ``(M, D)`` (signal, fakes, background).
        truth: Generator-level values of the data's fiducial events ``(T, D)``, detected or not.
        is_fake: Which observed events are fakes ``(M,)`` (for validation only).
        is_background: Which observed events are background ``(M,)`` (for validation only).
        rows: Number of produced data rows (the "luminosity" the background is normalised to).
    """

    reco: Tensor
    truth: Tensor
    is_fake: Tensor
    is_background: Tensor
    rows: int


def _normal_pdf(x: Tensor, mean: float, std: float) -> Tensor:
    return torch.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


@dataclass(frozen=True)
class GaussianUnfoldingToy:
    r"""A one-observable Gaussian unfolding problem (see the module docstring for the process).

    Attributes:
        sim_mean, sim_std: Simulation truth :math:`\mathcal N(\mu, \sigma)`.
        data_mean, data_std: Data truth.
        smearing: Detector resolution :math:`\sigma_s`.
        efficiency: :math:`\varepsilon_0`; efficiency_slope: :math:`\varepsilon_1` (efficiency
            :math:`\mathrm{clip}(\varepsilon_0 + \varepsilon_1\tanh z, 0, 1)`).
        fake_fraction: Probability that a produced row is a fake.
        fake_mean, fake_std: Detector-level distribution of fakes.
        background_fraction: Probability that a data row is background.
        background_mean, background_std: Detector-level distribution of the background.
    """

    sim_mean: float = 0.2
    sim_std: float = 0.8
    data_mean: float = 0.0
    data_std: float = 1.0
    smearing: float = 0.5
    efficiency: float = 1.0
    efficiency_slope: float = 0.0
    fake_fraction: float = 0.0
    fake_mean: float = 0.5
    fake_std: float = 1.0
    background_fraction: float = 0.0
    background_mean: float = 0.0
    background_std: float = 1.2

    def __post_init__(self) -> None:
        for name in ("sim_std", "data_std", "smearing", "fake_std", "background_std"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"GaussianUnfoldingToy.{name} must be positive; got {getattr(self, name)}.")
        for name in ("fake_fraction", "background_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"GaussianUnfoldingToy.{name} must be in [0, 1); got {getattr(self, name)}.")
        if not (0 < self.efficiency - abs(self.efficiency_slope) and self.efficiency + abs(self.efficiency_slope) <= 1):
            raise ConfigError("GaussianUnfoldingToy: efficiency ± efficiency_slope must stay in (0, 1].")

    def efficiency_at(self, z: Tensor) -> Tensor:
        r""":math:`\varepsilon(z)`, same shape as ``z``."""
        return (self.efficiency + self.efficiency_slope * torch.tanh(z)).clamp(0.0, 1.0)

    def truth_pdf(self, z: Tensor, *, data: bool) -> Tensor:
        """Density of the data (``data=True``) or simulation truth at ``z``."""
        return _normal_pdf(z, self.data_mean, self.data_std) if data else _normal_pdf(z, self.sim_mean, self.sim_std)

    def smearing_pdf(self, x: Tensor, z: Tensor) -> Tensor:
        r""":math:`K(x|z) = \mathcal N(x; z, \sigma_s)` (broadcasting)."""
        return _normal_pdf(x - z, 0.0, self.smearing)

    def fake_pdf(self, x: Tensor) -> Tensor:
        """Detector-level density of fakes."""
        return _normal_pdf(x, self.fake_mean, self.fake_std)

    def background_pdf(self, x: Tensor) -> Tensor:
        """Detector-level density of the background."""
        return _normal_pdf(x, self.background_mean, self.background_std)

    def _rows(self, n: int, mean: float, std: float, scale: float | None, g: torch.Generator | None) -> PairedSample:
        fake = torch.rand(n, generator=g, dtype=torch.float64) < self.fake_fraction
        width = std * (scale or 1.0)
        z = mean + width * torch.randn(n, generator=g, dtype=torch.float64)
        detected = torch.rand(n, generator=g, dtype=torch.float64) < self.efficiency_at(z)
        x = z + self.smearing * torch.randn(n, generator=g, dtype=torch.float64)
        x_fake = self.fake_mean + self.fake_std * torch.randn(n, generator=g, dtype=torch.float64)
        pass_gen, pass_reco = ~fake, fake | detected
        gen = torch.where(pass_gen, z, 0.0)
        reco = torch.where(fake, x_fake, torch.where(detected, x, 0.0))
        w = torch.ones(n, dtype=torch.float64)
        if scale is not None:  # importance weights p/q: non-uniform MC weights, same weighted distribution
            w = torch.where(pass_gen, _normal_pdf(z, mean, std) / _normal_pdf(z, mean, width), 1.0)
        return PairedSample(gen[:, None], reco[:, None], pass_gen, pass_reco, w)

    def simulation(self, n: int, *, generator: torch.Generator | None = None, proposal_scale: float | None = None) -> PairedSample:
        r"""``n`` simulated rows at the simulation truth.

        Args:
            n: Number of produced rows (fakes included).
            generator: Random generator.
            proposal_scale: Draw the truth from :math:`\mathcal N(\mu, s\sigma)` instead and give
                fiducial events the importance weight :math:`p/q`: a weighted simulation with the
                same weighted distribution (tests non-uniform MC weights).
        """
        if proposal_scale is not None and not proposal_scale > 0:
            raise ConfigError(f"proposal_scale must be positive; got {proposal_scale}.")
        return self._rows(int(n), self.sim_mean, self.sim_std, proposal_scale, generator)

    def data(self, n: int, *, generator: torch.Generator | None = None) -> ToyData:
        """Observed data from ``n`` produced rows at the data truth (plus background rows)."""
        n = int(n)
        rows = self._rows(n, self.data_mean, self.data_std, None, generator)
        bkg = torch.rand(n, generator=generator, dtype=torch.float64) < self.background_fraction
        x_bkg = self.background_mean + self.background_std * torch.randn(n, generator=generator, dtype=torch.float64)
        observed = bkg | rows.pass_reco
        reco = torch.where(bkg, x_bkg, rows.reco[:, 0])[observed]
        truth = rows.gen[~bkg & rows.pass_gen]
        return ToyData(reco=reco[:, None], truth=truth, is_fake=(~bkg & ~rows.pass_gen)[observed],
                       is_background=bkg[observed], rows=n)

    def background(self, n: int, *, data_rows: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Background Monte Carlo: detector values ``(n, 1)`` and weights ``(n,)`` summing to the
        expected background count of ``data_rows`` produced data rows."""
        x = self.background_mean + self.background_std * torch.randn(int(n), generator=generator, dtype=torch.float64)
        w = torch.full((int(n),), self.background_fraction * data_rows / max(int(n), 1), dtype=torch.float64)
        return x[:, None], w


def minimal_toy() -> GaussianUnfoldingToy:
    """Simulation truth N(0.2, 0.8), data truth N(0, 1), smearing 0.5; no efficiency, fakes or background."""
    return GaussianUnfoldingToy(sim_mean=0.2, sim_std=0.8, data_mean=0.0, data_std=1.0, smearing=0.5)


def full_toy() -> GaussianUnfoldingToy:
    """Simulation truth N(0, 1), data truth N(0.2, 0.8), smearing 0.5, efficiency 0.9 + 0.08 tanh z,
    10 % fakes (x ~ N(0.5, 1)), 10 % background (x ~ N(0, 1.2))."""
    return GaussianUnfoldingToy(sim_mean=0.0, sim_std=1.0, data_mean=0.2, data_std=0.8, smearing=0.5,
                                efficiency=0.9, efficiency_slope=0.08, fake_fraction=0.1, fake_mean=0.5, fake_std=1.0,
                                background_fraction=0.1, background_mean=0.0, background_std=1.2)
