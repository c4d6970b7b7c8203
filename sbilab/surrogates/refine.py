r"""Refinement of a surrogate by classifier weights (DCTR: Andreassen, Nachman, arXiv:1907.08209).

A :class:`~sbilab.estimators.Classifier` trained on surrogate events (class 0) against original
events (class 1) converges to :math:`f = \log\frac{W_1 p_\mathrm{orig}}{W_0 p_\mathrm{sur}}`, so

.. math:: \hat w(x) = e^{f(x)}\,\frac{W_0}{W_1} \approx \frac{p_\mathrm{orig}(x)}{p_\mathrm{sur}(x)}

reweights surrogate events into original ones (:func:`refinement_weights`, through the core's
:func:`~sbilab.estimators.classifier_weights`, with its reported clipping), and
:math:`\log p_\mathrm{sur} + \log\hat w` is the refined log-likelihood (:func:`log_weight` is the
correction term, differentiable; :class:`~sbilab.surrogates.stages.Composition` normalises it per
truth value). The features are what both samples share: ``[θ, x]`` for a whole simulator,
``[truth, θ, reco]`` for a stage (:func:`~sbilab.surrogates.pairs.stage_features`).

Weighting costs statistical power: the Kish effective sample size
:math:`N_\mathrm{eff} = (\sum w)^2/\sum w^2` is reported, and a :class:`LowEffectiveSampleSizeWarning`
names it when :math:`N_\mathrm{eff}/N` falls below a threshold (a surrogate that far off should be
retrained, not reweighted).

The classifier is trained on all events for all epochs (``validation_fraction=0``,
``patience=None``): with early stopping on a small noisy validation split, an early epoch can be
kept and its probabilities are then biased, which biases every weight.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import torch
from torch import Tensor

from ..estimators import Classifier, ClassifierWeights, carl_loss, classifier_training_data, classifier_weights
from ..exceptions import ConfigError, SbilabWarning
from ..training import fit

__all__ = ["train_refinement", "refinement_weights", "log_weight", "stage_log_ratio", "ratio_agreement", "LowEffectiveSampleSizeWarning"]


class LowEffectiveSampleSizeWarning(SbilabWarning):
    """Refinement weights leave an effective sample size below the threshold (the ESS is in the message)."""


def train_refinement(
    surrogate: Any,
    original: Any,
    *,
    weights_surrogate: Any = None,
    weights_original: Any = None,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 30,
    batch_size: int = 512,
    learning_rate: float = 2e-3,
    seed: int = 0,
    progress: bool = False,
    device: str = "cpu",
) -> Classifier:
    r"""Train the refinement classifier: surrogate rows (label 0) against original rows (label 1).

    Args:
        surrogate: Features of surrogate events, ``(N0, F)``.
        original: Features of original events, ``(N1, F)`` (the same columns).
        weights_surrogate, weights_original: Event weights, ``(N0,)`` and ``(N1,)``.
        hidden: Hidden widths of the classifier.

    Returns:
        The trained :class:`~sbilab.estimators.Classifier` (publishable); its ``class_totals``
        hold :math:`(W_0, W_1)`.
    """
    data = classifier_training_data(surrogate, original, weights0=weights_surrogate, weights1=weights_original)
    clf = Classifier.from_events(data, hidden=tuple(hidden), seed=seed)
    fit(clf, carl_loss, data, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, validation_fraction=0.0,
        patience=None, seed=seed, progress=progress, device=device)
    return clf.eval()


def log_weight(classifier: Classifier, features: Any) -> Tensor:
    r"""The likelihood correction :math:`\log\hat w = f + \log(W_0/W_1)`, ``(N,)``; differentiable (for θ among the features)."""
    totals = classifier.class_totals.double()
    return classifier.logit(features).double() + math.log(float(totals[0] / totals[1]))


def refinement_weights(
    classifier: Classifier,
    features: Any,
    *,
    base_weights: Any = None,
    w_min: float = 0.0,
    w_max: float = math.inf,
    ess_threshold: float = 0.5,
) -> ClassifierWeights:
    r"""Per-event refinement weights :math:`\hat w` of surrogate events, with clipping and ESS reported.

    Args:
        classifier: From :func:`train_refinement`.
        features: Surrogate events' features, ``(N, F)``, as in training.
        base_weights: Weights the events already carry, ``(N,)``.
        w_min, w_max: Clipping range (reported by :class:`~sbilab.estimators.WeightClippingWarning`).
        ess_threshold: Warn when :math:`N_\mathrm{eff}/N` is below this fraction, in [0, 1].

    Returns:
        :class:`~sbilab.estimators.ClassifierWeights` (``weights``, ``effective_sample_size``,
        ``normalisation`` :math:`\approx 1` for a calibrated classifier, clipping counts).

    Warns:
        LowEffectiveSampleSizeWarning: :math:`N_\mathrm{eff}/N < ` ``ess_threshold``.

    Raises:
        ConfigError: ``ess_threshold`` outside [0, 1].
    """
    if not 0.0 <= ess_threshold <= 1.0:
        raise ConfigError(f"refinement_weights: ess_threshold is the minimal N_eff/N, in [0, 1]; got {ess_threshold}.")
    with torch.no_grad():
        logits = classifier.logit(features)
    result = classifier_weights(logits, class_totals=classifier.class_totals, base_weights=base_weights, w_min=w_min, w_max=w_max)
    n = int(result.weights.numel())
    if n and result.effective_sample_size < ess_threshold * n:
        warnings.warn(f"refinement_weights: effective sample size {result.effective_sample_size:.1f} of {n} events "
                      f"({result.effective_sample_size / n:.1%}) is below the threshold {ess_threshold:.0%}; the surrogate is far "
                      "from the original there: retrain it rather than rely on the weights.", LowEffectiveSampleSizeWarning, stacklevel=2)
    return result


def stage_log_ratio(original: Any, surrogate: Any, truth: Tensor, reco: Tensor, theta: Tensor | None = None) -> Tensor:
    r"""Exact :math:`\log\frac{\varepsilon(z)\,p(x\mid z)}{\hat\varepsilon(z)\,q(x\mid z)}` of two stages with known densities, ``(N,)``.

    What a refinement classifier on ``[truth, reco]`` should learn (up to a constant, the ratio of
    the acceptances), when the original stage is a toy's exact detector: the reference against
    which its weights are checked (:func:`ratio_agreement`).

    Args:
        original, surrogate: :class:`~sbilab.surrogates.stages.Stage` objects.
        truth: ``(N, L)``; reco: ``(N, D)``; theta: ``(N, P)`` for θ-dependent stages.
    """
    with torch.no_grad():
        num = original.log_efficiency(truth, theta).double() + original.log_prob(reco, truth, theta).double()
        den = surrogate.log_efficiency(truth, theta).double() + surrogate.log_prob(reco, truth, theta).double()
    return num - den


def ratio_agreement(learned: Tensor, exact: Tensor) -> dict[str, float]:
    r"""How well a learned log-ratio follows the exact one, both up to a constant (means removed), over events ``(N,)``.

    Returns:
        ``{"events", "std_exact", "std_learned", "correlation", "rms_difference", "median_abs_exact"}``
        (events with a non-finite exact value are left out).
    """
    ok = torch.isfinite(exact) & torch.isfinite(learned)
    e, l = exact[ok].double(), learned[ok].double()
    e, l = e - e.mean(), l - l.mean()
    norm = float(((e**2).sum() * (l**2).sum()).sqrt())
    corr = float((e * l).sum()) / norm if norm > 0 else math.nan
    return {"events": int(ok.sum()), "std_exact": float(e.std()), "std_learned": float(l.std()), "correlation": corr,
            "rms_difference": float((e - l).pow(2).mean().sqrt()), "median_abs_exact": float(e.abs().median())}

