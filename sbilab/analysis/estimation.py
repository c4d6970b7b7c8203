r"""The shared first half of every pipeline: build the toy, fix the truth, train the estimators.

:func:`train_ratio` trains the ``[estimator] method`` on the training data its loss asks for
(:class:`~sbilab.estimators.losses.LossInfo`: a ratio estimator on the labelled, augmented pairs
of :func:`~sbilab.simulators.ratio_training_data`, a likelihood estimator on augmented events at
their own θ); :func:`train_score` trains a SALLY :class:`~sbilab.estimators.ScoreEstimator` on
events at the reference point (:func:`~sbilab.simulators.augment.score_training_data`). Both go
through :func:`sbilab.training.fit` with the ``[training]`` options, the one training loop;
ensembles are reduced by :class:`~sbilab.estimators.EnsembleMean`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ..exceptions import ConfigError
from ..simulators import augment, ratio_training_data
from ..simulators.augment import score_training_data
from ..simulators.base import Simulator
from ..simulators.exact import ExactLogRatio
from ..simulators.registry import build_toy
from ..training.config import TrainingConfig
from .config import AnalysisConfig

__all__ = ["build_simulator", "truth_point", "Trained", "fit_estimator", "train_ratio", "train_score", "learned_log_ratio", "exact_log_ratio"]


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
