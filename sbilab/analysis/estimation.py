r"""The shared first half of every pipeline: build the toy, fix the truth, train the estimators.

:func:`train_ratio` trains the ``[estimator] method`` on the training data its loss asks for
(:class:`~sbilab.estimators.losses.LossInfo`: a ratio estimator on the labelled, augmented pairs
of :func:`~sbilab.simulators.ratio_training_data`, a likelihood estimator on augmented events at
their own θ); :func:`train_score` trains a SALLY :class:`~sbilab.estimators.ScoreEstimator` on
events at the reference point (:func:`~sbilab.simulators.augment.score_training_data`). Both go
through :func:`sbilab.training.fit` with the ``[training]`` options, the one training loop;
ensembles are reduced by :class:`~sbilab.estimators.EnsembleMean`. The training data are checked
on the way (:mod:`sbilab.simulators.checks`: a simulator whose joint likelihood misses a
θ-dependent normalisation stops the analysis), and :func:`check_trained_normalisation` tests the trained
ratio's normalisation :math:`E_\mathrm{ref}[\hat r(x|\theta)] = 1`, which every pipeline reports.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..exceptions import ConfigError, IdentityCheckWarning
from ..simulators import augment, ratio_training_data
from ..simulators.augment import score_training_data
from ..simulators.base import Simulator
from ..simulators.exact import ExactLogRatio
from ..simulators.registry import build_toy
from ..training.config import TrainingConfig
from .config import AnalysisConfig

__all__ = ["build_simulator", "truth_point", "Trained", "fit_estimator", "train_ratio", "train_score", "learned_log_ratio", "exact_log_ratio",
           "check_trained_normalisation", "check_lines", "fit_quality", "fit_lines", "CHECK_POINTS", "CHECK_EVENTS"]

CHECK_POINTS = 8
"""Points of the learned-ratio normalisation check: the truth and ``CHECK_POINTS - 1`` proposal draws."""

CHECK_EVENTS = 20_000
"""Events per sample of that check (at the reference and at each point), at most ``n_simulations // 4``."""


def build_simulator(config: AnalysisConfig) -> Simulator:
    """The toy simulator named by ``[simulator] toy`` (a registered toy) with the remaining keys as options."""
    return build_toy(config.toy, config.toy_options, where=f"{config.path}: [simulator]")


def truth_point(config: AnalysisConfig, sim: Simulator) -> Tensor:
    """The ``[truth]`` point as ``(P,)`` in the simulator's parameter order; checks names and bounds."""
    names = list(sim.space.names)
    if sorted(config.truth) != sorted(names):
        raise ConfigError(f"{config.path}: [truth] gives {sorted(config.truth)} but the {config.toy!r} toy has parameters {names}.")
    unknown = sorted(set(config.nuisances) - set(names))
    if unknown:
        raise ConfigError(f"{config.path}: [nuisances] names {unknown}, which are not parameters of the {config.toy!r} toy ({names}).")
    theta = torch.tensor([[config.truth[n] for n in names]])
    sim.space.check(theta, argument=f"{config.path}: [truth]")
    return theta[0]


@dataclass
class Trained:
    """A trained estimator: the module (estimator or Ensemble, on the CPU, in eval mode) and its training record.

    ``kind`` is what the loss trained (:data:`~sbilab.estimators.losses.EstimatorKind`).
    """

    estimator: nn.Module
    model: nn.Module
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    device: str
    n_events: int
    kind: str = "ratio"

    def record(self) -> dict:
        return {"epochs_run": self.epochs_run, "best_epoch": self.best_epoch, "best_val_loss": self.best_val_loss,
                "seconds": self.seconds, "device": self.device, "n_events": self.n_events}


def fit_estimator(estimator: nn.Module, loss, data, tr: TrainingConfig, *, device: str, progress: bool, started: float,
                  kind: str = "ratio") -> Trained:
    """Train ``estimator`` with ``loss`` on ``data`` with the ``[training]`` options ``tr``; the trained model on the CPU, in eval mode."""
    from ..nets.ensemble import Ensemble
    from ..training import fit

    model = Ensemble(estimator, tr.ensemble) if tr.ensemble > 1 else estimator  # fit trains what it is given
    result = fit(model, loss, data, **tr.to_dict(), device=device, progress=progress)
    return Trained(estimator, result.model.to("cpu").eval(), result.epochs_run, result.best_epoch, result.best_val_loss,
                   time.perf_counter() - started, str(result.device), len(data), kind)


def train_ratio(config: AnalysisConfig, sim: Simulator, *, device: str = "auto", progress: bool = False,
                log: Callable[[str], None] = lambda msg: None) -> Trained:
    """Train the ``[estimator] method``: a RatioEstimator, or a LikelihoodEstimator for losses that train one (NDE, SCANDAL)."""
    from ..estimators import LikelihoodEstimator, RatioEstimator, get_loss, loss_info

    est, tr = config.estimator, config.training
    info = loss_info(est.method)
    generator = torch.Generator().manual_seed(tr.seed)
    started = time.perf_counter()
    if info.estimator == "likelihood":  # events at their own theta, drawn from the proposal
        data = augment(sim, sim.simulate(est.n_simulations, generator=generator))
    elif info.estimator == "ratio":  # labelled pairs: at theta (1) and at the reference (0)
        data = ratio_training_data(sim, est.n_simulations // 2, generator=generator)
    else:
        raise ConfigError(f"{config.path}: [estimator] method = {est.method!r} trains a {info.estimator!r} estimator; "
                          "the pipelines train ratio or likelihood estimators.")
    with torch.random.fork_rng():  # seeded network initialisation, caller's RNG untouched
        torch.manual_seed(tr.seed)
        if info.estimator == "likelihood":
            estimator = LikelihoodEstimator.from_events(data, sim.space)
        else:
            estimator = RatioEstimator.from_events(data, sim.space, hidden=est.hidden, activation=est.activation)
    loss = get_loss(info.name, **({"alpha": est.alpha} if "alpha" in info.options else {}))
    log(f"training {info.name.upper()} on {len(data)} simulated events ({tr.epochs} epochs at most, ensemble of {tr.ensemble})")
    return fit_estimator(estimator, loss, data, tr, device=device, progress=progress, started=started, kind=info.estimator)


def train_score(config: AnalysisConfig, sim: Simulator, n: int, *, device: str = "auto", progress: bool = False,
                log: Callable[[str], None] = lambda msg: None) -> Trained:
    r"""Train a SALLY score estimator :math:`\hat t(x)` at the reference point on ``n`` augmented events."""
    from ..estimators import ScoreEstimator, get_loss

    est, tr = config.estimator, config.training
    started = time.perf_counter()
    data = score_training_data(sim, n, generator=torch.Generator().manual_seed(tr.seed + 1))
    with torch.random.fork_rng():
        torch.manual_seed(tr.seed + 1)
        estimator = ScoreEstimator.from_events(data, sim.space, hidden=est.hidden, activation=est.activation)
    log(f"training SALLY on {len(data)} events at the reference point")
    return fit_estimator(estimator, get_loss("sally"), data, tr, device=device, progress=progress, started=started, kind="score")


def learned_log_ratio(trained: Trained, sim: Simulator) -> nn.Module:
    r"""``log r̂(x|θ)`` against the space's reference, ``(N,)`` for ``x (N, D)``, ``theta (N, P)``, as a module.

    A ratio estimator returns :math:`\log\hat r` itself; a likelihood estimator gives
    :math:`\log\hat p(x|\theta) - \log\hat p(x|\theta_\mathrm{ref})`
    (:class:`~sbilab.estimators.DensityRatio`); an ensemble enters as its
    :class:`~sbilab.estimators.EnsembleMean` (mean of log r̂; mixture of densities).
    """
    from ..estimators import DensityRatio, EnsembleMean

    model = EnsembleMean.of(trained.model)
    if trained.kind == "likelihood":
        return DensityRatio(model, sim.space.reference.to(torch.get_default_dtype())).eval()
    return model.eval()


def exact_log_ratio(sim: Simulator) -> Callable[[Tensor, Tensor], Tensor]:
    r"""The toy's exact :math:`\log p(x|\theta) - \log p(x|\theta_\mathrm{ref})` (:class:`~sbilab.simulators.exact.ExactLogRatio`)."""
    return ExactLogRatio(sim)


def check_trained_normalisation(trained: Trained, sim: Simulator, config: AnalysisConfig, truth: Tensor, *,
                        log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    r"""Test the trained ratio's :math:`E_\mathrm{ref}[\hat r(x|\theta)] = 1` (:func:`~sbilab.stats.ratio_normalisation`).

    Fresh samples (seeded from ``[training] seed``) are drawn at the reference and at the
    :data:`CHECK_POINTS` points (the truth and draws from the proposal), and the normalisation is
    the bridge estimate, with the default threshold (5σ) and tolerance (0.02). A failure is
    logged and warned about (:class:`~sbilab.exceptions.IdentityCheckWarning`); the pipelines put
    the returned summary in their results (``checks.ratio_normalisation``) and their printed summary.

    Returns:
        :meth:`~sbilab.stats.NormalisationCheck.to_dict` of the check.
    """
    from ..stats import ratio_normalisation

    n = max(1000, min(CHECK_EVENTS, config.estimator.n_simulations // 4))
    generator = torch.Generator().manual_seed(config.training.seed + 7919)
    points = torch.cat([truth.reshape(1, -1).to(torch.float64), sim.space.sample(CHECK_POINTS - 1, generator=generator).to(torch.float64)])
    reference = sim.simulate(n, theta=sim.space.reference, generator=generator)
    samples = [sim.simulate(n, theta=p, generator=generator) for p in points]
    check = ratio_normalisation(learned_log_ratio(trained, sim), reference, points, samples=samples, names=sim.space.names)
    if check.passed:
        log(check.message())
    else:
        log(f"WARNING: {check.message()}")
        warnings.warn(f"{config.name}: {check.message()}", IdentityCheckWarning, stacklevel=2)
    return check.to_dict()


def check_lines(checks: dict[str, dict[str, Any]]) -> list[str]:
    """Summary lines of the checks: a loud banner for each failed one, a short line for each passed one."""
    lines = []
    for name, result in checks.items():
        if result["passed"]:
            lines.append(f"check {name}: passed ({result['message']})")
        else:
            lines.append(f"!!! CHECK FAILED, DO NOT TRUST THE LEARNED RESULT — {name}: {result['message']}")
    return lines


def fit_quality(result: Any) -> dict[str, Any]:
    """What a results document records of a :class:`~sbilab.stats.FitResult`'s honesty.

    Returns:
        ``{"valid", "reason", "at_bound", "outside_support", "notes"}``: whether the fit is a
        measurement, why not (:mod:`sbilab.stats.quality`), the parameters at a bound, the
        weighted fraction of observed events outside the estimator's training support (``None``
        when the estimator recorded none) and the notes that do not invalidate the fit.
    """
    outside = float(result.outside_support)
    return {"valid": bool(result.valid), "reason": result.reason, "at_bound": list(result.at_bound),
            "outside_support": None if outside != outside else outside, "notes": list(result.notes)}


def fit_lines(quality: dict[str, dict[str, Any]]) -> list[str]:
    """Summary lines of :func:`fit_quality` records by label: a loud banner for each fit that is not valid."""
    return [f"!!! FIT NOT VALID, DO NOT QUOTE IT — {label} fit: {q['reason']}" for label, q in quality.items() if not q["valid"]]
