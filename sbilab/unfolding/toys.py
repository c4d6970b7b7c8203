r"""Gaussian unfolding toys with paired generator/detector events, efficiency, fakes and background.

Every row of a simulation is one produced event, drawn as follows (``D = 1``):

* with probability ``fake_fraction`` it is a **fake**: an event from outside the generator-level
  (fiducial) selection that migrates into the detector-level one: ``pass_gen = False``,
  ``pass_reco = True``, detector value :math:`x \sim \mathcal N(\mu_f, \sigma_f)`;
* otherwise it is a fiducial event: :math:`z \sim \mathcal N(\mu, \sigma)` (``pass_gen = True``),
  detected with the smooth **efficiency** :math:`\varepsilon(z) = \mathrm{clip}(\varepsilon_0 +
  \varepsilon_1 \tanh z,\ 0,\ 1)` (``pass_reco``) and then smeared,
  :math:`x = z + \sigma_s\,\xi`, :math:`\xi \sim \mathcal N(0, 1)`.

A simulation is a :class:`~sbilab.paired.PairedEvents` (generator level ``gen``, detector level
``reco``, the pass flags and, for importance-sampled truth, weights). Values behind a failed
selection (the generator value of a fake, the detector value of an undetected event) are set to
0 and carry no meaning: always use the pass flags.

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
    >>> sim.gen.x.shape, sim.reco.x.shape, sim.pass_gen.dtype, bool((sim.pass_gen | sim.pass_reco).all())
    (torch.Size([1000, 1]), torch.Size([1000, 1]), torch.bool, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import ConfigError
from ..paired import PairedEvents
from ..simulators.registry import register_toy

__all__ = ["ToyData", "GaussianUnfoldingToy", "minimal_toy", "full_toy"]


@dataclass(frozen=True)
class ToyData:
    """Observed toy data and the truth it comes from.

    Attributes:
        reco: Detector-level values of every observed event ``(M, D)`` (signal, fakes, background);
            :attr:`events` gives them as observed :class:`~sbilab.events.Events`.
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

    @property
    def events(self) -> Events:
        """The observed detector-level events, ``Events.observed(reco)``."""
        return Events.observed(self.reco)


def _normal_pdf(x: Tensor, mean: float, std: float) -> Tensor:
    return torch.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


@register_toy("unfolding_gaussian")
@dataclass(frozen=True)
class GaussianUnfoldingToy:
    r"""A one-observable Gaussian unfolding problem (see the module docstring for the process).

    Registered as the toy ``"unfolding_gaussian"`` (its fields are the ``[simulator]`` options of
    an analysis; the data truth ``data_mean``/``data_std`` its ``[truth]``).

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

    def _rows(self, n: int, mean: float, std: float, scale: float | None, g: torch.Generator | None) -> PairedEvents:
        fake = torch.rand(n, generator=g, dtype=torch.float64) < self.fake_fraction
        width = std * (scale or 1.0)
        z = mean + width * torch.randn(n, generator=g, dtype=torch.float64)
        detected = torch.rand(n, generator=g, dtype=torch.float64) < self.efficiency_at(z)
        x = z + self.smearing * torch.randn(n, generator=g, dtype=torch.float64)
        x_fake = self.fake_mean + self.fake_std * torch.randn(n, generator=g, dtype=torch.float64)
        pass_gen, pass_reco = ~fake, fake | detected
        gen = torch.where(pass_gen, z, 0.0)
        reco = torch.where(fake, x_fake, torch.where(detected, x, 0.0))
        w = None
        if scale is not None:  # importance weights p/q: non-uniform MC weights, same weighted distribution
            w = torch.where(pass_gen, _normal_pdf(z, mean, std) / _normal_pdf(z, mean, width), 1.0)
        return PairedEvents(Events.observed(gen[:, None]), Events.observed(reco[:, None]), pass_gen=pass_gen,
                            pass_reco=pass_reco, weights=w)

    def simulation(self, n: int, *, generator: torch.Generator | None = None, proposal_scale: float | None = None) -> PairedEvents:
        r"""``n`` simulated rows at the simulation truth, paired generator/detector events.

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
        reco = torch.where(bkg, x_bkg, rows.reco.x[:, 0])[observed]
        truth = rows.gen.x[~bkg & rows.pass_gen]
        return ToyData(reco=reco[:, None], truth=truth, is_fake=(~bkg & ~rows.pass_gen)[observed],
                       is_background=bkg[observed], rows=n)

    def smearing_weights(self, sim: PairedEvents, scale: float) -> Tensor:
        r"""Per-event weights that turn ``sim`` into a simulation with resolution ``scale`` times :math:`\sigma_s`.

        Matched events get the exact ratio of detector responses
        :math:`K(x|z;\,s\sigma_s)/K(x|z;\,\sigma_s)` (times their weight); misses and fakes keep their
        weight: a detector systematic as per-event weights ``(N,)`` float64.

        Raises:
            ConfigError: ``scale`` not positive.
        """
        if not scale > 0:
            raise ConfigError(f"scale must be positive; got {scale}.")
        w = sim.weights_or_ones().to(torch.float64)
        delta = (sim.reco.x - sim.gen.x)[:, 0].to(torch.float64)
        ratio = _normal_pdf(delta, 0.0, scale * self.smearing) / _normal_pdf(delta, 0.0, self.smearing)
        return torch.where(sim.matched, w * ratio, w)

    def background(self, n: int, *, data_rows: int, generator: torch.Generator | None = None) -> Events:
        """Background Monte Carlo: ``n`` detector-level events ``(n, 1)`` whose weights ``(n,)`` sum
        to the expected background count of ``data_rows`` produced data rows."""
        x = self.background_mean + self.background_std * torch.randn(int(n), generator=generator, dtype=torch.float64)
        w = torch.full((int(n),), self.background_fraction * data_rows / max(int(n), 1), dtype=torch.float64)
        return Events.observed(x[:, None], weights=w)


def minimal_toy() -> GaussianUnfoldingToy:
    """Simulation truth N(0.2, 0.8), data truth N(0, 1), smearing 0.5; no efficiency, fakes or background."""
    return GaussianUnfoldingToy(sim_mean=0.2, sim_std=0.8, data_mean=0.0, data_std=1.0, smearing=0.5)


def full_toy() -> GaussianUnfoldingToy:
    """Simulation truth N(0, 1), data truth N(0.2, 0.8), smearing 0.5, efficiency 0.9 + 0.08 tanh z,
    10 % fakes (x ~ N(0.5, 1)), 10 % background (x ~ N(0, 1.2))."""
    return GaussianUnfoldingToy(sim_mean=0.0, sim_std=1.0, data_mean=0.2, data_std=0.8, smearing=0.5,
                                efficiency=0.9, efficiency_slope=0.08, fake_fraction=0.1, fake_mean=0.5, fake_std=1.0,
                                background_fraction=0.1, background_mean=0.0, background_std=1.2)
