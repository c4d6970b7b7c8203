r"""The shared first half of every pipeline: build the toy, fix the truth, train the estimators.

:func:`train_ratio` trains the configured ratio (or likelihood) estimator on the augmented
training set of :func:`~sbilab.simulators.ratio_training_data`; :func:`train_score` trains a
SALLY :class:`~sbilab.estimators.ScoreEstimator` on events at the reference point
(:func:`~sbilab.simulators.augment.score_training_data`). Both go through
:func:`sbilab.training.fit`, the one training loop.
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
from .config import AnalysisConfig, TrainingSection

__all__ = ["build_simulator", "truth_point", "Trained", "fit_estimator", "train_ratio", "train_score", "learned_log_ratio", "exact_log_ratio"]

_TOYS = {
    "gaussian": ("sbilab.simulators.toys.gaussian", "GaussianLatent"),
    "resonance": ("sbilab.simulators.toys.resonance", "Resonance"),
    "resonance_background": ("sbilab.simulators.toys.resonance_bkg", "ResonanceBackground"),
    "morphing": ("sbilab.simulators.toys.morphing", "Morphing"),
}


def build_simulator(config: AnalysisConfig) -> Simulator:
    """The toy simulator named by ``[simulator] toy`` with the remaining keys as options."""
    import importlib

    module, name = _TOYS[config.toy]
    try:
        return getattr(importlib.import_module(module), name)(**config.toy_options)
    except TypeError as err:
        raise ConfigError(f"{config.path}: [simulator] options {config.toy_options} do not fit the {config.toy!r} toy ({err}).") from None


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
    """A trained estimator: the module (estimator or Ensemble, on the CPU, in eval mode) and its training record."""

    estimator: nn.Module
    model: nn.Module
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    device: str
    n_events: int

    def record(self) -> dict:
        return {"epochs_run": self.epochs_run, "best_epoch": self.best_epoch, "best_val_loss": self.best_val_loss,
                "seconds": self.seconds, "device": self.device, "n_events": self.n_events}


def fit_estimator(estimator: nn.Module, loss, data, tr: TrainingSection, *, device: str, progress: bool, started: float) -> Trained:
    """Train ``estimator`` with ``loss`` on ``data`` by the ``[training]`` settings ``tr``; the trained model on the CPU, in eval mode."""
    from ..training import fit

    result = fit(estimator, loss, data, epochs=tr.epochs, batch_size=tr.batch_size, learning_rate=tr.learning_rate,
                 patience=tr.patience or None, min_delta=0.0, ensemble=tr.ensemble, seed=tr.seed, device=device, progress=progress)
    return Trained(estimator, result.model.to("cpu").eval(), result.epochs_run, result.best_epoch, result.best_val_loss,
                   time.perf_counter() - started, str(result.device), len(data))


def train_ratio(config: AnalysisConfig, sim: Simulator, *, device: str = "auto", progress: bool = False,
                log: Callable[[str], None] = lambda msg: None) -> Trained:
    """Train the ``[training] method`` estimator (a RatioEstimator, or a LikelihoodEstimator for NDE/SCANDAL)."""
    from ..estimators import LikelihoodEstimator, RatioEstimator, get_loss

    tr = config.training
    generator = torch.Generator().manual_seed(tr.seed)
    started = time.perf_counter()
    if tr.method in ("nde", "scandal"):
        data = augment(sim, sim.simulate(tr.n_simulations, generator=generator))
        with torch.random.fork_rng():  # seeded network initialisation, caller's RNG untouched
            torch.manual_seed(tr.seed)
            estimator = LikelihoodEstimator.from_events(data, sim.space)
        loss = get_loss(tr.method, alpha=tr.alpha) if tr.method == "scandal" else get_loss("nde")
    else:
        data = ratio_training_data(sim, tr.n_simulations // 2, generator=generator)
        with torch.random.fork_rng():
            torch.manual_seed(tr.seed)
            estimator = RatioEstimator.from_events(data, sim.space, hidden=tr.hidden, activation=tr.activation)
        options = {"alpha": tr.alpha} if tr.method in ("rascal", "alices", "cascal") else {}
        loss = get_loss(tr.method, **options)
    log(f"training {tr.method.upper()} on {len(data)} simulated events ({tr.epochs} epochs at most, ensemble of {tr.ensemble})")
    return fit_estimator(estimator, loss, data, tr, device=device, progress=progress, started=started)


def train_score(config: AnalysisConfig, sim: Simulator, n: int, *, device: str = "auto", progress: bool = False,
                log: Callable[[str], None] = lambda msg: None) -> Trained:
    r"""Train a SALLY score estimator :math:`\hat t(x)` at the reference point on ``n`` augmented events."""
    from ..estimators import ScoreEstimator, get_loss

    tr = config.training
    started = time.perf_counter()
    data = score_training_data(sim, n, generator=torch.Generator().manual_seed(tr.seed + 1))
    with torch.random.fork_rng():
        torch.manual_seed(tr.seed + 1)
        estimator = ScoreEstimator.from_events(data, sim.space, hidden=tr.hidden, activation=tr.activation)
    log(f"training SALLY on {len(data)} events at the reference point")
    return fit_estimator(estimator, get_loss("sally"), data, tr, device=device, progress=progress, started=started)


class _LogRatio(nn.Module):
    r"""``forward(x, theta) -> log r̂ (N,)`` of a trained model, as a module (so fits can cast it to float64).

    Ratio estimators return :math:`\log\hat r` directly; likelihood estimators
    :math:`\log\hat p(x|\theta) - \log\hat p(x|\theta_\mathrm{ref})`; ensembles the members' mean.
    """

    def __init__(self, model: nn.Module, reference: Tensor, density: bool) -> None:
        super().__init__()
        self.model = model
        self.density = density
        self.register_buffer("reference", reference.clone())

    def _one(self, x: Tensor, theta: Tensor) -> Tensor:
        out = self.model(x, theta)
        return out.mean(0) if out.dim() == 2 else out

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        if not self.density:
            return self._one(x, theta)
        return self._one(x, theta) - self._one(x, self.reference.to(x.dtype).expand(len(x), -1))


def learned_log_ratio(trained: Trained, sim: Simulator) -> nn.Module:
    """``log r̂(x|θ)`` against the space's reference from a trained ratio or likelihood estimator (ensemble mean)."""
    from ..estimators import LikelihoodEstimator

    density = isinstance(trained.estimator, LikelihoodEstimator)
    return _LogRatio(trained.model, sim.space.reference.to(torch.get_default_dtype()), density).eval()


class _ExactRatio:
    r"""Exact log-ratio; caches :math:`\log p(x|\theta_\mathrm{ref})` of the last ``x`` (fits call it with the same events)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self._key: tuple | None = None
        self._ref: Tensor | None = None
        self._x: Tensor | None = None

    def __call__(self, x: Tensor, theta: Tensor) -> Tensor:
        key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype, x.device)
        if key != self._key:  # the cache holds x itself, so its memory cannot be reused by other events
            with torch.no_grad():
                self._ref = self.sim.log_prob(x, self.sim.space.reference.to(x.dtype).expand(len(x), -1))
            self._key, self._x = key, x
        return self.sim.log_prob(x, theta) - self._ref


def exact_log_ratio(sim: Simulator) -> Callable[[Tensor, Tensor], Tensor]:
    r"""The toy's exact :math:`\log p(x|\theta) - \log p(x|\theta_\mathrm{ref})`, ``(N,)`` for ``x (N, D)``, ``theta (N, P)``."""
    return _ExactRatio(sim)
