r"""Inference of the splitting-kernel parameters (D, F, C): a thin composition of the core.

Every network is a core estimator trained by :func:`sbilab.training.fit`; every fit goes through
:class:`sbilab.stats.UnbinnedLikelihood`; the augmented data come from
:func:`sbilab.simulators.ratio_training_data` and the simulators' exact ``joint_log_prob``
(:class:`~sbilab.simulators.shower.PartonShower`, :class:`~sbilab.simulators.shower.PrimaryEmissions`).

* learned ratios without gold (CARL, arXiv:1506.02169) and with the history's joint ratio and
  score (RASCAL, ALICES; arXiv:1805.00020, 1808.00973): :func:`train_splitting_ratio`, summed over a data
  set and fitted: :func:`fit_parameters`;
* SALLY's Fisher information (arXiv:1805.00013) against the joint Fisher information of the
  histories, which bounds it: :func:`train_sally`, :func:`joint_fisher`;
* a cINN posterior from a set of events (:class:`~sbilab.estimators.PosteriorEstimator` with a
  deep-sets embedding over the events of a data set, each event entering as its observables or as
  the fixed vector its particles are summarised by): :func:`dataset_events`, :func:`train_posterior`,
  and its calibration (SBC, expected coverage): :func:`calibrate_posterior`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from ..estimators import PosteriorEstimator, RatioEstimator, ScoreEstimator, get_loss
from ..events import Events
from ..simulators import ratio_training_data, score_training_data
from ..simulators.augment import joint_score
from ..simulators.base import Simulator, checked_sample
from ..stats import UnbinnedLikelihood
from ..stats.diagnostics import UniformityResult, expected_coverage, sbc
from ..stats.fisher import fisher_from_scores
from ..stats.results import FitResult as StatsFit
from ..training import fit

__all__ = ["ALPHA", "TrainOptions", "SetLogRatio", "without_history", "train_splitting_ratio", "fit_parameters", "hessian_widths", "joint_fisher",
           "train_sally", "dataset_events", "train_posterior", "calibrate_posterior"]

ALPHA = {"carl": None, "rascal": 1.0, "alices": 0.1}
"""Ratio methods and the weight of their score term (None: no augmented data)."""


@dataclass(frozen=True)
class TrainOptions:
    """Network and training options shared by every estimator here (see :func:`sbilab.training.fit`)."""

    hidden: tuple[int, ...] = (100, 100)
    epochs: int = 20
    batch_size: int = 512
    learning_rate: float = 2e-3
    embedding: dict[str, Any] | None = None
    chunk: int = 20_000
    seed: int = 0
    progress: bool = False

    def fit_kwargs(self) -> dict[str, Any]:
        return dict(epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate, patience=None,
                    seed=self.seed, progress=self.progress, device="cpu")


class SetLogRatio(nn.Module):
    r"""``forward(x, theta) -> log r̂``: a set-input ratio estimator with its mask read off ``x``.

    Padding rows of ``x (N, M, F)`` are all zeros (shower particles, toy emissions), so the
    mask is ``x.ne(0).any(-1)``; vector inputs pass through. Lets a set estimator plug into
    :class:`~sbilab.stats.UnbinnedLikelihood`, which passes ``(x, theta)`` only.
    """

    def __init__(self, estimator: RatioEstimator) -> None:
        super().__init__()
        self.estimator = estimator

    def forward(self, x: Tensor, theta: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.dim() == 3:
            return self.estimator(x, theta, x.ne(0).any(-1) if mask is None else mask)
        return self.estimator(x, theta)


def without_history(events: Events) -> Events:
    """The events without their (large) latent history: what training and fitting need."""
    return events.replace(latent=None, latent_mask=None)


def _training_data(simulator: Simulator, n: int, *, augmented: bool, chunk: int, generator: torch.Generator) -> Events:
    """``ratio_training_data`` in chunks of ``chunk`` events per class, histories dropped after augmentation."""
    parts = [without_history(ratio_training_data(simulator, min(chunk, n - start), generator=generator, augmented=augmented))
             for start in range(0, n, chunk)]
    return parts[0] if len(parts) == 1 else Events.concatenate(parts)


def train_splitting_ratio(simulator: Simulator, method: str, n: int, options: TrainOptions = TrainOptions()) -> RatioEstimator:
    r"""A :class:`~sbilab.estimators.RatioEstimator` of :math:`\log r(x|\theta)` against the reference.

    Args:
        simulator: A simulator with ``joint_log_prob`` (for RASCAL/ALICES).
        method: ``"carl"``, ``"rascal"`` or ``"alices"`` (:data:`ALPHA`).
        n: Training events per class (``2 n`` in all).
    """
    generator = torch.Generator().manual_seed(options.seed)
    data = _training_data(simulator, n, augmented=ALPHA[method] is not None, chunk=options.chunk, generator=generator)
    torch.manual_seed(options.seed)
    extra = {} if options.embedding is None or not data.is_set else {"embedding": dict(options.embedding)}
    estimator = RatioEstimator.from_events(data, simulator.space, hidden=options.hidden, **extra)
    loss = get_loss(method) if ALPHA[method] is None else get_loss(method, alpha=ALPHA[method])
    return fit(estimator, loss, data, **options.fit_kwargs()).model


def fit_parameters(estimator: RatioEstimator, observed: Events, space: Any, *, tolerance: float = 0.01) -> StatsFit:
    r"""Unbinned fit :math:`\max_\theta \sum_i \log\hat r(x_i|\theta)` of the observed events (HESSE errors)."""
    fn = SetLogRatio(estimator) if observed.is_set else estimator
    return UnbinnedLikelihood(fn, Events.observed(observed.x), space, tolerance=tolerance).fit()


def hessian_widths(log_ratio: Callable[[Tensor, Tensor], Tensor], x: Tensor, theta: Tensor, *, chunk: int = 20_000) -> Tensor:
    r"""Widths :math:`\sqrt{\mathrm{diag}\,H^{-1}}` of :math:`H = -\nabla^2_\theta \sum_i \log\hat r(x_i|\theta)` at ``theta (P,)``, ``(P,)``.

    The HESSE width of an unbounded fit at θ (no parameter limits, so weakly constrained parameters
    get their width even where a bounded fit would stop at a limit). A module estimator is
    evaluated in a float64 copy; sums are float64. ``x``: ``(N, D)`` or ``(N, M, F)`` (zero padding).
    """
    if isinstance(log_ratio, nn.Module):
        log_ratio = copy.deepcopy(log_ratio).double().eval()
    point = torch.as_tensor(theta, dtype=torch.float64).reshape(-1)
    hessian = torch.zeros(point.numel(), point.numel(), dtype=torch.float64)
    for start in range(0, len(x), chunk):
        xc = x[start:start + chunk].to(torch.float64)

        def total(th: Tensor, xc: Tensor = xc) -> Tensor:
            return -log_ratio(xc, th.expand(len(xc), -1)).sum()

        hessian += torch.autograd.functional.hessian(total, point)
    return torch.sqrt(torch.diag(torch.linalg.inv(hessian)))


def joint_fisher(simulator: Simulator, events: Events, *, chunk: int = 20_000) -> Tensor:
    r"""Per-event joint Fisher information :math:`E[t(x,z|\theta)\,t(x,z|\theta)^\top]` of events drawn at one θ, ``(P, P)``.

    It bounds the information of any function of x, SALLY's included (:math:`I_x \preceq I_{x,z}`).
    """
    scores = torch.cat([joint_score(simulator, events[i:i + chunk]) for i in range(0, len(events), chunk)])
    return fisher_from_scores(scores)


def train_sally(simulator: Simulator, n: int, options: TrainOptions = TrainOptions()) -> ScoreEstimator:
    r"""SALLY: a :class:`~sbilab.estimators.ScoreEstimator` of :math:`t(x|\theta_\mathrm{ref})` from ``n`` events at the reference."""
    generator = torch.Generator().manual_seed(options.seed)
    parts = [without_history(score_training_data(simulator, min(options.chunk, n - s), generator=generator))
             for s in range(0, n, options.chunk)]
    data = parts[0] if len(parts) == 1 else Events.concatenate(parts)
    torch.manual_seed(options.seed)
    extra = {} if options.embedding is None or not data.is_set else {"embedding": dict(options.embedding)}
    estimator = ScoreEstimator.from_events(data, simulator.space, hidden=options.hidden, **extra)
    return fit(estimator, get_loss("sally"), data, **options.fit_kwargs()).model


def dataset_events(simulator: Simulator, n_sets: int, set_size: int, *, generator: torch.Generator,
                   theta: Tensor | None = None) -> Events:
    r"""Data sets as observations: ``x (n_sets, set_size, D)`` of per-event observables, θ per set from the proposal.

    The simulator must return vector observables ``(N, D)`` (e.g. ``PartonShower(output="observables")``).
    """
    theta = simulator.space.sample(n_sets, generator=generator) if theta is None else theta
    events = checked_sample(simulator, theta.repeat_interleave(set_size, dim=0), generator=generator)
    x = events.x.reshape(n_sets, set_size, -1)
    return Events(x=x, theta=theta, mask=torch.ones(n_sets, set_size, dtype=torch.bool))


def train_posterior(data: Events, space: Any, options: TrainOptions = TrainOptions(), *, transforms: int = 4,
                    embedding_width: int = 32) -> PosteriorEstimator:
    r"""A cINN :math:`q(\theta|\{x_i\})` of data sets ``(n_sets, M, D)``: neural spline flow on a deep-sets embedding.

    Architecture: per event, its D observables (standardised); over the events of a set, deep sets
    :math:`\rho(\sum_i \phi(x_i))` with mean pooling (φ, ρ: MLPs of ``options.hidden``), giving a
    ``embedding_width`` context; a conditional NSF with ``transforms`` autoregressive spline
    transforms on the bounded (D, F, C) box.
    """
    torch.manual_seed(options.seed)
    embedding = {"kind": "deepsets", "out_features": embedding_width, "hidden": list(options.hidden), "pooling": "mean"}
    estimator = PosteriorEstimator.from_events(data, space, transforms=transforms, hidden=options.hidden, embedding=embedding)
    return fit(estimator, get_loss("npe"), data, **options.fit_kwargs()).model


def calibrate_posterior(posterior: PosteriorEstimator, test: Events, *, samples: int = 200, seed: int = 0) -> tuple[UniformityResult, UniformityResult]:
    """SBC ranks and expected coverage of the posterior on held-out data sets ``test`` (θ from the prior)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        draws = posterior.sample(samples, test.x, mask=test.mask, generator=generator)  # (S, N, P)
        log_q = posterior(draws, test.x, test.mask)
        log_true = posterior(test.theta.unsqueeze(0), test.x, test.mask)[0]
    return sbc(draws, test.theta), expected_coverage(log_q, log_true)
