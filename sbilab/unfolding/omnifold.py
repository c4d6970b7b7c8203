r"""OmniFold / MultiFold: unbinned iterative unfolding with classifiers (Andreassen et al., arXiv:1911.09107).

The simulation is a :class:`~sbilab.paired.PairedEvents` (generator level ``gen``, detector level
``reco``, pass masks, weights :math:`w_i`); the data are detector-level
:class:`~sbilab.events.Events`. Each simulated event carries a *push* weight :math:`\nu_i`
(generator level, starting at 1); iteration :math:`k` updates it in two steps:

1. **Pull** (detector level): a classifier separates the data from the reco-passing simulation
   weighted :math:`w\nu^k`; its odds :math:`\omega(x) = (D - B)(x) / S_k(x)` (absolute, in summed
   weights) give every detected event the pulled weight :math:`\omega_i = \nu^k_i\,\omega(x_i)`.
   A **background** Monte Carlo is either subtracted (added to the data side with negative
   weights, ``background="subtract"``) or *fitted*: added to the simulation side with one
   normalisation :math:`c_b` updated like a cause (``"fit"``; the shape from the Monte Carlo,
   the normalisation from the data).
1b. **Efficiency** (events passing gen but not reco): they receive the mean pulled weight of
   detected events at the same generator value, :math:`E[\omega\,|\,z, \text{detected}]`, from
   a classifier between the matched events weighted :math:`w\nu` and :math:`w\omega`.
2. **Push** (generator level): a classifier between the gen-passing events weighted :math:`w\nu^k`
   and :math:`w\omega` gives the smooth :math:`\nu^{k+1}(z) = \nu^k(z)\,E[\omega(x)\,|\,z]`.

**Fakes** (pass reco, not gen) are one extra cause: they share one push weight :math:`c_k`,
updated to the weighted mean of their pulled weights (RooUnfold's convention, as in
:func:`~sbilab.unfolding.ibu.iterative_unfold`). With a perfect classifier and infinite
statistics these are the ideal iterations :func:`~sbilab.unfolding.ideal.ideal_iterations`
(continuous IBU), which the tests and the benchmark hold this implementation to.

Every classifier is a fresh :class:`~sbilab.estimators.Classifier` (``warm_start`` optional)
trained by :func:`~sbilab.training.fit` (:mod:`~sbilab.unfolding.steps`); inputs of any number of
observables, or padded particle sets through the set embeddings. Every iteration's push and
pull weights are kept, and every step's weight quality (:class:`~.diagnostics.StepDiagnostics`:
ESS, clipping, calibration, change between iterations); NaN/inf weights are an error.

**Replicas** (:class:`~sbilab.unfolding.replicas.Replicas`): ensembles, bootstraps of data and
simulation, systematic weight variations are all members of one batched ensemble per step; the
result publishes them as ATLAS weight columns (:meth:`OmniFoldResult.to_result`).

Example:
    >>> from sbilab.unfolding.toys import minimal_toy
    >>> from sbilab.unfolding.steps import ClassifierSettings, DEFAULT_TRAINING
    >>> import dataclasses
    >>> toy, g = minimal_toy(), torch.Generator().manual_seed(0)
    >>> fast = ClassifierSettings(hidden=(16,), training=dataclasses.replace(DEFAULT_TRAINING, epochs=2))
    >>> out = omnifold(toy.simulation(2000, generator=g), toy.data(2000, generator=g).events,
    ...                settings=OmniFoldSettings(iterations=2, classifier=fast), progress=False)
    >>> out.push.shape, out.weights().shape, [d.step for d in out.diagnostics]
    (torch.Size([3, 1, 2000]), torch.Size([1, 2000]), ['1', '2', '1', '2'])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..events import Events
from ..exceptions import ConfigError, ShapeMismatchError
from ..paired import PairedEvents
from .checks import check_inputs
from .diagnostics import StepDiagnostics, check_finite_weights, relative_change
from .replicas import ReplicaLayout, Replicas
from .result import UnfoldedResult
from .steps import ClassifierSettings, step_ratio

__all__ = ["OmniFoldSettings", "OmniFoldResult", "omnifold", "BackgroundMode"]

BackgroundMode = Literal["subtract", "fit"]


@dataclass(frozen=True)
class OmniFoldSettings:
    """Options of :func:`omnifold`.

    Attributes:
        iterations: Number of iterations ``I >= 1``.
        classifier: The classifiers and their training (:class:`~sbilab.unfolding.steps.ClassifierSettings`).
        background: ``"subtract"`` (background MC with negative weight on the data side) or
            ``"fit"`` (background MC on the simulation side with a fitted normalisation).
    """

    iterations: int = 4
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    background: BackgroundMode = "subtract"

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ConfigError(f"OmniFoldSettings.iterations must be an integer >= 1; got {self.iterations!r}.")
        if self.background not in ("subtract", "fit"):
            raise ConfigError(f"OmniFoldSettings.background must be 'subtract' or 'fit'; got {self.background!r}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"method": "omnifold", "iterations": self.iterations, "background": self.background,
                "classifier": self.classifier.to_dict()}


@dataclass(frozen=True, eq=False)
class OmniFoldResult:
    """Every iteration of an OmniFold unfolding, for every replica.

    Attributes:
        push: Push weights :math:`\\nu^k` per iteration ``k = 0..I``, member and simulated event,
            ``(I + 1, K, N)`` (``k = 0``: ones; fakes hold the shared fake weight :math:`c_k`).
        pull: Pulled weights :math:`\\omega^k`, ``(I, K, N)`` (events failing reco: after step 1b).
        mc_weights: The simulation weights of every member (bootstraps, systematics), ``(K, N)``.
        pass_gen, pass_reco: The simulation's selections ``(N,)``.
        fake_scale: :math:`c_k`, ``(I + 1, K)``.
        background_scale: Fitted background normalisation per iteration ``(I + 1, K)`` (ones
            when subtracted).
        diagnostics: Weight quality of every step of every iteration.
        layout: Which member is which replica.
        settings: The options used.
        gen: The simulation's generator level (the events the weights belong to).
    """

    push: Tensor
    pull: Tensor
    mc_weights: Tensor
    pass_gen: Tensor
    pass_reco: Tensor
    fake_scale: Tensor
    background_scale: Tensor
    diagnostics: tuple[StepDiagnostics, ...]
    layout: ReplicaLayout
    settings: OmniFoldSettings
    gen: Events

    @property
    def iterations(self) -> int:
        """Number of iterations ``I``."""
        return self.pull.shape[0]

    def _k(self, iteration: int | None) -> int:
        k = self.iterations if iteration is None else int(iteration)
        if not 0 <= k <= self.iterations:
            raise ConfigError(f"iteration must be in 0..{self.iterations}; got {iteration}.")
        return k

    def weights(self, iteration: int | None = None) -> Tensor:
        """Unfolded generator-level weights :math:`w\\nu^k` of every member, ``(K, N)`` (0 for fakes); default: the last iteration."""
        return self.mc_weights * self.push[self._k(iteration)] * self.pass_gen

    def nominal_weights(self, iteration: int | None = None) -> Tensor:
        """The nominal unfolded weights: the mean over the ensemble members, ``(N,)``."""
        return self.weights(iteration)[self.layout.members("ensemble")].mean(0)

    def to_result(self, observables: Sequence[str], units: Sequence[str], *, events: Tensor | None = None,
                  iteration: int | None = None) -> UnfoldedResult:
        """The published result: gen-passing events and every weight column (ATLAS naming).

        Args:
            observables, units: Names and units of the generator-level observables.
            events: Generator-level observables ``(N, D)`` of all simulated rows (default: the
                simulation's ``gen.x``, when it is a vector; give observables computed from
                particle sets here).
            iteration: Which iteration (default: the last).

        Raises:
            ShapeMismatchError: no vector events to publish, or ``events`` of the wrong length.
        """
        if events is None:
            if self.gen.is_set:
                raise ShapeMismatchError("the generator level is a particle set; pass events=(N, D) observables computed from it.")
            events = self.gen.x
        events = torch.as_tensor(events)
        events = events[:, None] if events.dim() == 1 else events
        if events.shape[0] != self.pass_gen.shape[0]:
            raise ShapeMismatchError(f"events has {events.shape[0]} rows; the simulation has {self.pass_gen.shape[0]}.")
        k = self._k(iteration)
        sel = self.pass_gen
        w = self.weights(k)[:, sel]
        lay = self.layout
        pick = {kind: (w[lay.members(kind)] if lay.members(kind) else None) for kind in ("ensemble", "bootstrap_data", "bootstrap_mc")}
        ensemble = pick["ensemble"]
        systs = {name: w[i] for name, i in zip(lay.systematics, lay.members("systematic"))}
        return UnfoldedResult(events[sel], tuple(observables), tuple(units), ensemble.mean(0),
                              weights_ensemble=ensemble if lay.ensemble > 1 else None,
                              weights_bootstrap_mc=pick["bootstrap_mc"], weights_bootstrap_data=pick["bootstrap_data"],
                              weights_systematics=systs, iterations=k,
                              settings={**self.settings.to_dict(), "replicas": lay.to_dict()})


def _cat(a: Events, b: Events) -> Events:
    """Observables (and set masks) of two samples as one (sets padded to the longer)."""
    if not a.is_set:
        return Events.observed(torch.cat([a.x, b.x]))
    return Events.concatenate([Events.observed(a.x, mask=a.mask), Events.observed(b.x, mask=b.mask)])


class _Step:
    """One step's classifier across iterations: fresh each time, or warm-started from the previous one."""

    def __init__(self, name: str, settings: ClassifierSettings, device: str | torch.device) -> None:
        self.name, self.settings, self.device = name, settings, device
        self.model: nn.Module | None = None

    def ratio(self, iteration: int, sample0: Events, w0: Tensor, sample1: Events, w1: Tensor,
              apply_to: Events | None = None, base: Tensor | None = None) -> tuple[Tensor, list]:
        seed = self.settings.training.seed + 7919 * iteration + {"1": 0, "1b": 1, "2": 2}[self.name]
        ratio, reports, self.model = step_ratio(sample0, w0, sample1, w1, settings=self.settings, seed=seed, apply_to=apply_to,
                                                base=base, warm=self.model if self.settings.warm_start else None,
                                                device=self.device)
        return ratio, reports


def omnifold(mc: PairedEvents, data: Events, *, background: Events | None = None,
             settings: OmniFoldSettings | None = None, replicas: Replicas | None = None,
             device: str | torch.device = "auto", progress: bool = True) -> OmniFoldResult:
    r"""Unfold ``data`` with the paired simulation ``mc`` by OmniFold (see the module docs).

    Args:
        mc: Simulated pairs: ``gen`` and ``reco`` Events (vectors or padded sets), ``pass_gen``,
            ``pass_reco`` and weights (negative weights allowed; positive totals required).
        data: Observed detector-level events (optionally weighted), same observables as ``mc.reco``.
        background: Background Monte Carlo at detector level with weights normalised to the data.
        settings: Iterations, classifiers, background treatment.
        replicas: Ensemble, bootstraps and systematics (default: one nominal member).
        device: Training device.
        progress: Show a progress bar over the steps.

    Returns:
        :class:`OmniFoldResult` with every iteration's weights and diagnostics.

    Raises:
        InvalidEventsError: inputs that are not (Paired)Events, all-zero or negative-sum weights,
            data minus background without a positive total.
        ShapeMismatchError: data (or background) and simulation with different observables.
        NonFiniteOutputError: a classifier produced NaN/inf weights.
    """
    settings = OmniFoldSettings() if settings is None else settings
    replicas = Replicas() if replicas is None else replicas
    check_inputs(mc, data, background, owner="omnifold")
    mc, data = mc.to("cpu"), data.to("cpu")  # the events stay on the host; fit moves each training set to its device
    background = None if background is None else background.to("cpu")
    layout = replicas.layout()
    cls = settings.classifier
    w_mc = replicas.mc_weights(mc.weights_or_ones()).T  # (K, N)
    w_data = replicas.data_weights(data.weights_or_ones()).T  # (K, M)
    fit_bkg = background is not None and settings.background == "fit"
    w_bkg = replicas.background_weights(background.weights_or_ones()).T if background is not None else None
    k_members, n = w_mc.shape
    reco, gen, miss, fake, matched = mc.pass_reco, mc.pass_gen, mc.misses, mc.fakes, mc.matched
    sim_reco, sim_gen = mc.reco[reco].replace(weights=None), mc.gen[gen].replace(weights=None)
    data_x = data.replace(weights=None)
    n_reco = int(reco.sum())
    if background is not None:
        bkg_x = background.replace(weights=None)
        step1_sample0 = _cat(sim_reco, bkg_x) if fit_bkg else sim_reco
        step1_sample1 = data_x if fit_bkg else _cat(data_x, bkg_x)
    else:
        step1_sample0, step1_sample1 = sim_reco, data_x
    steps = {name: _Step(name, cls, device) for name in ("1", "1b", "2")}
    nu = torch.ones(k_members, n, dtype=torch.float64)
    c_fake = torch.ones(k_members, dtype=torch.float64)
    c_bkg = torch.ones(k_members, dtype=torch.float64)
    pushes, pulls, fakes_scale, bkg_scale, diagnostics = [nu], [], [c_fake], [c_bkg], []
    n_steps = settings.iterations * (3 if bool(miss.any()) else 2)
    bar = tqdm(total=n_steps, disable=not progress, desc="omnifold", unit="step")
    try:
        for it in range(1, settings.iterations + 1):
            # step 1: data (minus background) against the simulation, at detector level
            base = (w_mc * nu)[:, reco]
            if background is None:
                w0, w1 = base, w_data
            elif fit_bkg:
                w0, w1 = torch.cat([base, w_bkg * c_bkg[:, None]], 1), w_data
            else:
                w0, w1 = base, torch.cat([w_data, -w_bkg], 1)
            ratio, reports = steps["1"].ratio(it, step1_sample0, w0, step1_sample1, w1)
            omega = nu.clone()
            omega[:, reco] = nu[:, reco] * ratio[:, :n_reco]
            check_finite_weights(omega, f"omnifold iteration {it}, step 1")
            change = relative_change(omega[:, reco], pulls[-1][:, reco], w_mc[:, reco]) if pulls else None
            diagnostics.append(StepDiagnostics.from_weights(it, "1", reports, change=change))
            if fit_bkg:
                c_bkg = c_bkg * (w_bkg * ratio[:, n_reco:]).sum(-1) / w_bkg.sum(-1)
            if bool(fake.any()):
                w_f = w_mc[:, fake]
                c_fake = (w_f * omega[:, fake]).sum(-1) / torch.where(w_f.sum(-1) != 0, w_f.sum(-1), torch.ones_like(c_fake))
            bar.update(1)
            # step 1b: undetected events take the mean pulled weight of detected ones at the same z
            if bool(miss.any()):
                sample = mc.gen[matched]
                ratio, reports = steps["1b"].ratio(it, sample, (w_mc * nu)[:, matched], sample, (w_mc * omega)[:, matched],
                                                   mc.gen[miss], (w_mc * nu)[:, miss])
                omega[:, miss] = nu[:, miss] * ratio
                check_finite_weights(omega, f"omnifold iteration {it}, step 1b")
                diagnostics.append(StepDiagnostics.from_weights(it, "1b", reports))
                bar.update(1)
            pulls.append(omega)
            # step 2: pull -> push at generator level
            base = (w_mc * nu)[:, gen]
            ratio, reports = steps["2"].ratio(it, sim_gen, base, sim_gen, (w_mc * omega)[:, gen])
            new = nu.clone()
            new[:, gen] = nu[:, gen] * ratio
            new[:, fake] = c_fake[:, None]
            check_finite_weights(new, f"omnifold iteration {it}, step 2")
            diagnostics.append(StepDiagnostics.from_weights(it, "2", reports,
                                                            change=relative_change(new[:, gen], nu[:, gen], w_mc[:, gen])))
            nu = new
            pushes.append(nu)
            fakes_scale.append(c_fake)
            bkg_scale.append(c_bkg)
            bar.update(1)
    finally:
        bar.close()
    return OmniFoldResult(push=torch.stack(pushes), pull=torch.stack(pulls), mc_weights=w_mc, pass_gen=gen.cpu(),
                          pass_reco=reco.cpu(), fake_scale=torch.stack(fakes_scale), background_scale=torch.stack(bkg_scale),
                          diagnostics=tuple(diagnostics), layout=layout, settings=settings, gen=mc.gen)
