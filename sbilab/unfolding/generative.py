r"""Generative unfolding: a conditional flow q(gen | reco) sampled per data event, and its iterated variant.

cINN unfolding (Bellagente et al., arXiv:2006.06685) learns the posterior of the generator level
given the detector level, :math:`q(z|x)`, on the simulation, and draws ``draws`` generator-level
events for every data event (all at once, :meth:`ConditionalDensity.sample`). The density is a
:class:`~sbilab.estimators.ConditionalDensity` trained by :func:`~sbilab.training.fit` with
``get_loss("density", target="latent")`` on ``mc.conditional(target="gen")`` (the matched
events: reco as context, gen as target, MC weights as weights). What it cannot see is handled
outside it, by classifiers (:mod:`~sbilab.unfolding.steps`):

* **background**: each data event is weighted by :math:`1 - B(x)/D(x)`, the odds of a
  classifier of background Monte Carlo (weighted to the data) against the data;
* **fakes**: and by the purity :math:`P(\text{matched}\,|\,x) = S(x)/(S(x) + cF(x))`, a
  classifier of the simulation's matched events (weights :math:`w\nu`) against its fakes
  (weights :math:`wc`);
* **efficiency**: every draw is weighted by :math:`1/\varepsilon(z)`, with
  :math:`\varepsilon(z) = P(\text{reco}\,|\,z)` a classifier of the matched against the missed
  generator-level events (it does not depend on the prior, so it is trained once).

The unfolded events are the draws with weights :math:`a_i/(S\,\varepsilon(z))`,
:math:`a_i = w_i(1 - B/D)(x_i)P(\text{matched}|x_i)`, normalised to the data's fiducial count.

**Iterations** (IcINN, Backes et al., arXiv:2212.08674): the posterior depends on the
simulation's prior. Iteration :math:`k+1` reweights the simulation at generator level to the
unfolded draws of iteration :math:`k` (a classifier, push weights :math:`\nu`), updates the
fakes' normalisation :math:`c` to the data events assigned to fakes (the EM update of
D'Agostini's extra cause), retrains the purity and the density on the reweighted simulation and
samples again. With perfect networks iteration :math:`k` is D'Agostini's :math:`k`-th iteration
in the continuum, :func:`~sbilab.unfolding.ideal.ideal_iterations` — the same target as OmniFold's.

Example:
    >>> from sbilab.unfolding.toys import minimal_toy
    >>> from sbilab.unfolding.steps import ClassifierSettings, DEFAULT_TRAINING
    >>> import dataclasses
    >>> toy, g = minimal_toy(), torch.Generator().manual_seed(0)
    >>> quick = dataclasses.replace(DEFAULT_TRAINING, epochs=2)
    >>> settings = GenerativeSettings(iterations=2, draws=3, flow=FlowSpec("maf", transforms=1, hidden=(8,)),
    ...                               density_training=quick, classifier=ClassifierSettings(hidden=(8,), training=quick))
    >>> out = generative_unfold(toy.simulation(1000, generator=g), toy.data(1000, generator=g).events,
    ...                         settings=settings, progress=False)
    >>> out.samples.shape, out.sample_weights.shape, out.prior_weights.shape
    (torch.Size([2, 3000, 1]), torch.Size([2, 3000]), torch.Size([2, 1000]))
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..estimators import ConditionalDensity, get_loss
from ..events import Events
from ..exceptions import ConfigError, ShapeMismatchError
from ..nets.flows import FlowSpec
from ..paired import PairedEvents
from ..training import TrainingConfig, fit
from .diagnostics import StepDiagnostics, check_finite_weights
from .checks import check_inputs
from .steps import DEFAULT_TRAINING, ClassifierSettings, member_logits, step_ratio, train_step_classifier

__all__ = ["GenerativeSettings", "GenerativeResult", "generative_unfold"]


@dataclass(frozen=True)
class GenerativeSettings:
    """Options of :func:`generative_unfold`.

    Attributes:
        iterations: ``1``: plain cINN unfolding with the simulation's prior; ``> 1``: IcINN-style
            iterations, each reweighting the prior to the previous unfolded result.
        draws: Generator-level draws per data event ``S``.
        flow: Architecture of the conditional flow.
        low, high: Bounds of the generator-level observables (``None``: open).
        density_training: Options of :func:`~sbilab.training.fit` for the flow.
        classifier: The classifiers (efficiency, purity, background, prior reweighting).
        warm_start: Continue training the previous iteration's flow instead of a fresh one.
    """

    iterations: int = 1
    draws: int = 10
    flow: FlowSpec = field(default_factory=lambda: FlowSpec("nsf", transforms=4, hidden=(64, 64)))
    low: tuple[float | None, ...] | None = None
    high: tuple[float | None, ...] | None = None
    density_training: TrainingConfig = field(default_factory=lambda: dataclasses.replace(DEFAULT_TRAINING, learning_rate=1e-3))
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    warm_start: bool = False

    def __post_init__(self) -> None:
        for name in ("iterations", "draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"GenerativeSettings.{name} must be an integer >= 1; got {value!r}.")
        if not isinstance(self.flow, FlowSpec):
            object.__setattr__(self, "flow", FlowSpec.from_dict(self.flow))
        if self.density_training.ensemble != 1:
            raise ConfigError("GenerativeSettings.density_training.ensemble must be 1.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"method": "generative", "iterations": self.iterations, "draws": self.draws, "flow": self.flow.to_dict(),
                "low": None if self.low is None else list(self.low), "high": None if self.high is None else list(self.high),
                "density_training": self.density_training.to_dict(), "classifier": self.classifier.to_dict(),
                "warm_start": self.warm_start}


@dataclass(frozen=True, eq=False)
class GenerativeResult:
    """Every iteration of a generative unfolding.

    Attributes:
        samples: Generator-level draws per iteration, ``(I, M * S, D)`` (draw ``s`` of data event
            ``i`` at row ``s * M + i``).
        sample_weights: Their weights :math:`a_i/(S\\,\\varepsilon(z))`, ``(I, M * S)``.
        prior_weights: The simulation's push weights :math:`\\nu` of the prior of each iteration,
            ``(I, N)`` (iteration 1: ones, the simulation itself).
        fake_scale: Normalisation :math:`c` of the fakes: before iteration 1 (1) and after each, ``(I + 1,)``.
        data_weights: Per data event :math:`a_i` of each iteration, ``(I, M)``.
        diagnostics: Weight quality of every classifier step.
        settings: The options used.
    """

    samples: Tensor
    sample_weights: Tensor
    prior_weights: Tensor
    fake_scale: Tensor
    data_weights: Tensor
    diagnostics: tuple[StepDiagnostics, ...]
    settings: GenerativeSettings

    @property
    def iterations(self) -> int:
        """Number of iterations ``I``."""
        return self.samples.shape[0]

    def unfolded(self, iteration: int | None = None) -> tuple[Tensor, Tensor]:
        """Draws ``(M * S, D)`` and weights ``(M * S,)`` of an iteration (``1..I``; default the last)."""
        k = self.iterations if iteration is None else int(iteration)
        if not 1 <= k <= self.iterations:
            raise ConfigError(f"iteration must be in 1..{self.iterations}; got {iteration}.")
        return self.samples[k - 1], self.sample_weights[k - 1]


class _Classifiers:
    """The generative method's classifier steps, each a single-member :func:`~sbilab.unfolding.steps.step_ratio`."""

    def __init__(self, settings: ClassifierSettings, device: str | torch.device, diagnostics: list) -> None:
        self.settings, self.device, self.diagnostics = settings, device, diagnostics

    def odds(self, name: str, iteration: int, seed: int, x0: Events, w0: Tensor, x1: Events, w1: Tensor,
             apply_to: Events, base: Tensor) -> Tensor:
        """Absolute odds ``(W1 p1)/(W0 p0)`` of sample 1 over sample 0 on ``apply_to``, ``(N,)``."""
        ratio, reports, _ = step_ratio(x0, w0[None], x1, w1[None], settings=self.settings, seed=self.settings.training.seed + seed,
                                       apply_to=apply_to, base=base[None], device=self.device)
        self.diagnostics.append(StepDiagnostics.from_weights(iteration, name, reports))
        return check_finite_weights(ratio[0], f"generative unfolding, {name} step of iteration {iteration}")


def _train_density(events: Events, settings: GenerativeSettings, seed: int, warm: ConditionalDensity | None,
                   device: str | torch.device) -> ConditionalDensity:
    events = events.to(dtype=torch.get_default_dtype())
    if warm is not None:
        q = copy.deepcopy(warm)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            q = ConditionalDensity.from_events(events, target="latent", flow=settings.flow, low=settings.low, high=settings.high)
    fit(q, get_loss("density", target="latent"), events, **{**settings.density_training.to_dict(), "seed": seed},
        device=device, progress=False)
    return q


def generative_unfold(mc: PairedEvents, data: Events, *, background: Events | None = None,
                      settings: GenerativeSettings | None = None, device: str | torch.device = "auto",
                      progress: bool = True) -> GenerativeResult:
    r"""Unfold ``data`` by sampling a conditional flow q(gen | reco) trained on ``mc`` (see the module docs).

    Args:
        mc: Simulated pairs (``gen`` a vector ``(N, D)``; ``reco`` a vector or a padded set), pass masks, weights.
        data: Observed detector-level events, same observables as ``mc.reco``.
        background: Background Monte Carlo at detector level, weighted to the data.
        settings: Iterations, draws, flow, classifiers.
        device: Training device.
        progress: Show a progress bar over the iterations.

    Returns:
        :class:`GenerativeResult`.

    Raises:
        ShapeMismatchError: data and simulation with different observables, or a set at generator level.
        InvalidEventsError: all-zero or negative-sum weights, data minus background without a positive total.
        NonFiniteOutputError: a classifier produced NaN/inf weights.
    """
    settings = GenerativeSettings() if settings is None else settings
    check_inputs(mc, data, background, owner="generative_unfold")
    mc, data = mc.to("cpu"), data.to("cpu")  # the events stay on the host; fit moves each training set to its device
    background = None if background is None else background.to("cpu")
    if mc.gen.is_set:
        raise ShapeMismatchError("generative_unfold samples vector generator-level observables (N, D); the simulation's "
                                 "generator level is a particle set.")
    diagnostics: list[StepDiagnostics] = []
    steps = _Classifiers(settings.classifier, device, diagnostics)
    w_mc = mc.weights_or_ones().to(torch.float64)
    w_data = data.weights_or_ones().to(torch.float64)
    gen, matched, miss, fake = mc.pass_gen, mc.matched, mc.misses, mc.fakes
    reco_events = mc.reco[mc.pass_reco]
    # prior-independent pieces: background fraction of the data, efficiency at generator level
    keep = torch.ones_like(w_data)
    if background is not None:
        w_bkg = background.weights_or_ones().to(torch.float64)
        keep = 1 - steps.odds("background", 0, 11, data, w_data, background, w_bkg, data, w_data)
    eff_model = None
    if bool(miss.any()):
        eff_model = train_step_classifier(mc.gen.x[miss], w_mc[miss], mc.gen.x[matched], w_mc[matched],
                                     settings=settings.classifier, seed=settings.classifier.training.seed + 13, device=device)
    nu = torch.ones_like(w_mc)
    c = 1.0
    priors, scales, samples, weights, data_w = [nu], [c], [], [], []
    q = None
    bar = tqdm(total=settings.iterations, disable=not progress, desc="generative", unit="iteration")
    try:
        for it in range(1, settings.iterations + 1):
            purity = torch.ones_like(w_data)
            if bool(fake.any()):
                base = (w_mc * torch.where(fake, c, nu))[mc.pass_reco]
                is_fake = fake[mc.pass_reco]
                odds = steps.odds("purity", it, 17 * it, reco_events[is_fake], base[is_fake], reco_events[~is_fake],
                                  base[~is_fake], data, w_data)
                purity = odds / (1 + odds)  # S / (S + cF)
            a = w_data * keep * purity
            pairs = mc.with_weights((w_mc * nu).to(torch.get_default_dtype()))
            q = _train_density(pairs.conditional(target="gen"), settings, settings.density_training.seed + 31 * it,
                               q if settings.warm_start else None, device)
            z = q.sample(settings.draws, data.x.to(q.low), mask=data.mask, generator=torch.Generator(device=q.low.device).manual_seed(
                settings.density_training.seed + 37 * it))  # (S, M, D)
            z = z.reshape(-1, z.shape[-1]).to("cpu", torch.float64)
            w = a.repeat(settings.draws) / settings.draws
            if eff_model is not None:
                eff = torch.sigmoid(member_logits(eff_model, z)[0])
                w = w / eff.clamp_min(1e-6)
            samples.append(z)
            weights.append(check_finite_weights(w, f"generative unfolding, iteration {it}"))
            data_w.append(a)
            if bool(fake.any()):  # EM update of the fakes' normalisation: data events assigned to fakes
                c = float((w_data * keep * (1 - purity)).sum() / w_mc[fake].sum())
            if it < settings.iterations:  # IcINN: the prior of the next iteration is this result
                ratio = steps.odds("prior", it, 19 * it, mc.gen[gen], (w_mc * nu)[gen], Events.observed(z), w, mc.gen[gen],
                                   (w_mc * nu)[gen])
                nu = nu.clone()
                nu[gen] = nu[gen] * ratio
                nu[fake] = c
                priors.append(nu)
            scales.append(c)
            bar.update(1)
    finally:
        bar.close()
    return GenerativeResult(samples=torch.stack(samples), sample_weights=torch.stack(weights), prior_weights=torch.stack(priors),
                            fake_scale=torch.tensor(scales, dtype=torch.float64), data_weights=torch.stack(data_w),
                            diagnostics=tuple(diagnostics), settings=settings)
