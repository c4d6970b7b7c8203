r"""One reweighting step of an unfolding: a classifier between two weighted samples, for K replicas at once.

A step learns the ratio of two weighted samples of the same kind of events — sample 0 with
weights :math:`w^{(0)}` (the simulation as currently weighted) and sample 1 with weights
:math:`w^{(1)}` (the target) — with a :class:`~sbilab.estimators.Classifier` trained by
:func:`~sbilab.training.fit` on the binary cross-entropy
(:func:`~sbilab.estimators.carl_loss`); arXiv:1506.02169, and OmniFold arXiv:1911.09107 eq. 3.
Its odds :math:`e^{f(x)} = W_1 p_1(x) / (W_0 p_0(x))` are the ratio of the two *weighted
intensities*, the absolute ratio an iterative unfolding multiplies its weights by;
:func:`member_ratios` computes it per member as :math:`r(x)\,W_1/W_0` with the normalised ratio
:math:`r = e^f W_0/W_1` from :func:`~sbilab.estimators.classifier_weights` (which clips, counts
clipping and reports the effective sample size and the calibration :math:`E_0[r] = 1`).

**Replicas.** The weights are ``(N, K)``: one column per ensemble member. ``K = 1`` trains a plain
classifier; ``K > 1`` an :class:`~sbilab.nets.ensemble.Ensemble` of K classifiers in one
batched training (``Events.weights (N, K)``), each member with its own weights and initial
weights. Inputs may be vectors ``(N, D)`` or padded particle sets ``(N, M, F)`` with a mask
(the classifier embeds sets with :mod:`sbilab.nets.sets`; give zero-padded sets).

**Training options** (:class:`ClassifierSettings`) are explicit: no validation split and no early
stopping by default, because a classifier whose weights are taken from its best validation
epoch on a 10 % split came out mis-normalised by several per cent in the unfolding toys, while a
full cosine schedule without validation is calibrated to the statistical precision
(``tests/test_unfolding_omnifold.py`` checks the ratio against the exact one).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..estimators import Classifier, carl_loss, classifier_training_data, classifier_weights
from ..estimators.reweighting import ClassifierWeights
from ..events import Events
from ..exceptions import ConfigError, InvalidEventsError
from ..nets.ensemble import Ensemble
from ..training import TrainingConfig, fit

__all__ = ["ClassifierSettings", "DEFAULT_TRAINING", "train_step_classifier", "member_logits", "member_ratios", "class_totals", "step_ratio"]

DEFAULT_TRAINING = TrainingConfig(epochs=20, batch_size=1024, learning_rate=2e-3, schedule="cosine", final_lr_fraction=0.01,
                                  weight_decay=0.0, clip_norm=5.0, validation_fraction=0.0, patience=None, keep="last", seed=0)
"""The classifiers' training: 20 epochs of a cosine schedule from 2·10⁻³, batches of 1024, no validation split."""


@dataclass(frozen=True)
class ClassifierSettings:
    """The classifier of every step and how it is trained.

    Attributes:
        hidden: Hidden widths of the classifier's MLP.
        activation: Its activation.
        embedding: Set embedding of the steps whose inputs are particle sets (default: deep sets);
            steps with vector inputs ignore it.
        training: Options of :func:`~sbilab.training.fit` (its ``ensemble`` must be 1: replicas
            are set with :class:`~sbilab.unfolding.replicas.Replicas`; its ``seed`` is the base seed).
        w_min, w_max: Clipping range of every ratio (``w_max = None``: no upper clip).
        warm_start: Start each iteration's classifier of a step from the previous iteration's
            (instead of a fresh one).
    """

    hidden: tuple[int, ...] = (64, 64)
    activation: str = "silu"
    embedding: dict[str, Any] | None = None
    training: TrainingConfig = field(default_factory=lambda: DEFAULT_TRAINING)
    w_min: float = 0.0
    w_max: float | None = None
    warm_start: bool = False

    def __post_init__(self) -> None:
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"ClassifierSettings.hidden must list layer widths >= 1; got {self.hidden}.")
        if not isinstance(self.training, TrainingConfig):
            raise ConfigError(f"ClassifierSettings.training must be a TrainingConfig; got {type(self.training).__name__}.")
        if self.training.ensemble != 1:
            raise ConfigError("ClassifierSettings.training.ensemble must be 1; ensembles and bootstraps are set with Replicas(...).")
        w_max = math.inf if self.w_max is None else float(self.w_max)
        if not 0.0 <= float(self.w_min) < w_max:
            raise ConfigError(f"ClassifierSettings: need 0 <= w_min < w_max; got w_min={self.w_min}, w_max={self.w_max}.")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"hidden": list(self.hidden), "activation": self.activation, "embedding": self.embedding,
                "training": self.training.to_dict(), "w_min": self.w_min, "w_max": self.w_max, "warm_start": self.warm_start}


def _columns(weights: Tensor, n: int, name: str) -> Tensor:
    w = torch.as_tensor(weights, dtype=torch.float64)
    w = w[:, None] if w.dim() == 1 else w
    if w.dim() != 2 or w.shape[0] != n:
        raise InvalidEventsError(f"{name} must be ({n},) or ({n}, K) weights; got shape {tuple(w.shape)}.")
    if not bool(torch.isfinite(w).all()):
        raise InvalidEventsError(f"{name} holds NaN/inf weights.")
    return w


def class_totals(w0: Tensor, w1: Tensor) -> Tensor:
    r"""Per-member class totals :math:`(W_0, W_1)`, ``(K, 2)``, from weights ``(N0, K)`` and ``(N1, K)``.

    Raises:
        InvalidEventsError: a member's class total is not positive (all-zero or negative-sum weights).
    """
    totals = torch.stack([w0.sum(0), w1.sum(0)], -1)
    bad = ~(totals > 0)
    if bool(bad.any()):
        member, cls = torch.nonzero(bad)[0].tolist()
        raise InvalidEventsError(f"sample {cls} has a non-positive total weight {float(totals[member, cls]):g} (member {member}); "
                                 "weights must have a positive sum (e.g. data minus background must stay positive).")
    return totals


def train_step_classifier(x0: Tensor, w0: Tensor, x1: Tensor, w1: Tensor, *, settings: ClassifierSettings, seed: int,
                     mask0: Tensor | None = None, mask1: Tensor | None = None, warm: nn.Module | None = None,
                     device: str | torch.device = "auto", progress: bool = False) -> nn.Module:
    """Train one classifier per member: sample 0 (label 0) against sample 1 (label 1).

    Args:
        x0: ``(N0, D)`` or a zero-padded set ``(N0, M, F)``; x1: ``(N1, ...)`` likewise.
        w0: Weights of sample 0, ``(N0,)`` or ``(N0, K)`` (one column per member; negative entries allowed).
        w1: Weights of sample 1, ``(N1,)`` or ``(N1, K)``.
        settings: Network and training options.
        seed: Seed of the initial weights and the batch order.
        mask0, mask1: Set masks ``(N0, M)``, ``(N1, M')``.
        warm: A previously trained model of the same shape to start from (warm start).
        device: Training device.
        progress: Show the training progress bar.

    Returns:
        A :class:`~sbilab.estimators.Classifier` (``K = 1``) or an :class:`~sbilab.nets.ensemble.Ensemble`
        of ``K`` classifiers, trained.

    Raises:
        InvalidEventsError: weights of the wrong shape, non-finite, or with a non-positive class total.
    """
    a, b = _columns(w0, len(x0), "w0"), _columns(w1, len(x1), "w1")
    if a.shape[1] != b.shape[1]:
        raise InvalidEventsError(f"w0 has {a.shape[1]} member columns and w1 {b.shape[1]}; give both the same K.")
    class_totals(a, b)
    k = a.shape[1]
    events = classifier_training_data(x0, x1, mask0=mask0, mask1=mask1)
    if warm is not None:
        model = copy.deepcopy(warm)
    else:
        options: dict[str, Any] = {"hidden": settings.hidden, "activation": settings.activation}
        if settings.embedding is not None and events.is_set:  # the set embedding applies to set inputs only
            options["embedding"] = settings.embedding
        template = Classifier.from_events(events, seed=seed, **options)  # standardisation on the unweighted inputs
        model = template if k == 1 else Ensemble(template, k, generator=torch.Generator().manual_seed(seed))
    weights = torch.cat([a, b]).to(torch.get_default_dtype())
    events = events.replace(weights=weights[:, 0] if k == 1 else weights)
    # init="keep": the classifier was drawn from ``seed`` above, or is warm-started from the previous iteration's
    fit(model, carl_loss, events, **{**settings.training.to_dict(), "ensemble": 1, "seed": int(seed), "init": "keep"},
        device=device, progress=progress)
    return model


@torch.no_grad()
def member_logits(model: nn.Module, x: Tensor, *, mask: Tensor | None = None, chunk: int = 2**16) -> Tensor:
    """Logits of every member on ``x`` (``(N, D)`` or ``(N, M, F)`` with ``mask``), ``(K, N)`` float64 on the CPU."""
    param = next(model.parameters())
    model.eval()
    out = []
    for start in range(0, len(x), chunk):
        xs = x[start:start + chunk].to(device=param.device, dtype=param.dtype)
        ms = None if mask is None else mask[start:start + chunk].to(param.device)
        f = model(xs, None, ms)
        out.append((f if f.dim() == 2 else f[None]).to("cpu", torch.float64))
    model.train()
    if not out:
        k = model.k if isinstance(model, Ensemble) else 1
        return torch.zeros(k, 0, dtype=torch.float64)
    return torch.cat(out, -1)


def member_ratios(logits: Tensor, totals: Tensor, base: Tensor, settings: ClassifierSettings) -> tuple[Tensor, list[ClassifierWeights]]:
    r"""Absolute ratios :math:`e^{f}` per member (clipped as :math:`r W_1/W_0`), with each member's weight report.

    Args:
        logits: ``(K, N)``.
        totals: Class totals ``(K, 2)`` of the training samples (:func:`class_totals`).
        base: Weights of the reweighted events ``(K, N)`` (for the ESS and calibration report).
        settings: The clipping range.

    Returns:
        ``(ratio (K, N), [ClassifierWeights] * K)``; ``ratio = r W_1/W_0``.

    Raises:
        NonFiniteOutputError: a logit is NaN/inf or a ratio overflows.
    """
    w_max = math.inf if settings.w_max is None else float(settings.w_max)
    reports, ratios = [], []
    for k in range(logits.shape[0]):
        cw = classifier_weights(logits[k], class_totals=totals[k], base_weights=base[k], w_min=settings.w_min, w_max=w_max)
        reports.append(cw)
        ratios.append(cw.ratio * (totals[k, 1] / totals[k, 0]))
    return torch.stack(ratios), reports


def step_ratio(sample0: Events, w0: Tensor, sample1: Events, w1: Tensor, *, settings: ClassifierSettings, seed: int,
               apply_to: Events | None = None, base: Tensor | None = None, warm: nn.Module | None = None,
               device: str | torch.device = "auto") -> tuple[Tensor, list[ClassifierWeights], nn.Module]:
    r"""One reweighting step: train on (sample 0, ``w0``) vs (sample 1, ``w1``), return the absolute ratio on ``apply_to``.

    Args:
        sample0, sample1: Events (``x`` and, for sets, ``mask``; weights are ignored).
        w0: ``(K, N0)`` weights of sample 0 per member; w1: ``(K, N1)``.
        settings, seed, warm, device: As :func:`train_step_classifier`.
        apply_to: Events to evaluate the ratio on (default: sample 0).
        base: Weights ``(K, N)`` of ``apply_to`` for the ESS and clipping report (default ``w0``).

    Returns:
        ``ratio (K, N)`` (:math:`W_1 p_1/(W_0 p_0)` on ``apply_to``), one
        :class:`~sbilab.estimators.ClassifierWeights` per member (ESS and clipping on ``apply_to``,
        calibration :math:`E_0[r]` on sample 0, where it must be 1), and the trained model.
    """
    model = train_step_classifier(sample0.x, w0.T, sample1.x, w1.T, mask0=sample0.mask, mask1=sample1.mask, settings=settings,
                             seed=seed, warm=warm, device=device)
    totals = class_totals(w0.T, w1.T)
    own_ratio, own = member_ratios(member_logits(model, sample0.x, mask=sample0.mask), totals, w0, settings)
    if apply_to is None:
        return own_ratio, own, model
    ratio, reports = member_ratios(member_logits(model, apply_to.x, mask=apply_to.mask), totals,
                                   w0 if base is None else base, settings)
    reports = [dataclasses.replace(r, normalisation=o.normalisation, normalisation_error=o.normalisation_error)
               for r, o in zip(reports, own)]
    return ratio, reports, model
