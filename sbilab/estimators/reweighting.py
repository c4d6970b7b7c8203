r"""Classifier (or learned log-ratio) to per-event weights, with clipping that is reported.

A classifier trained with the binary cross-entropy on class 0 (total weight :math:`W_0`) against
class 1 (total :math:`W_1`) converges to :math:`p = \sigma(f) = W_1 p_1 / (W_1 p_1 + W_0 p_0)`, so
the density ratio that reweights class 0 into class 1 is

.. math::
    r(x) = \frac{p_1(x)}{p_0(x)} = \frac{p}{1-p}\,\frac{W_0}{W_1} = e^{f(x)}\,\frac{W_0}{W_1},

with weighted class totals :math:`W_c = \sum_{i: y_i = c} w_i` (for balanced, unweighted classes
the factor is 1; arXiv:1506.02169, and OmniFold arXiv:1911.09107 eq. 3). A learned
:math:`\log\hat r` (e.g. :meth:`~sbilab.estimators.RatioEstimator.log_ratio`) is the case
:math:`W_0 = W_1`. Every application that turns a classifier into weights — OmniFold's two
steps, CWoLa/CATHODE background weights, reweighting closure tests
(:func:`sbilab.calibration.closure_test`) — calls :func:`classifier_weights`.

Clipping to :math:`[w_\mathrm{min}, w_\mathrm{max}]` is applied to :math:`r` (in log space, so no
overflow), counted and announced with a :class:`WeightClippingWarning`; non-finite logits raise
:class:`~sbilab.exceptions.NonFiniteOutputError` (nothing is replaced silently). The result also
reports the effective sample size (Kish) :math:`N_\mathrm{eff} = (\sum_i w_i)^2 / \sum_i w_i^2` of
the final weights and the normalisation :math:`\sum_i b_i r_i / \sum_i b_i` (base weights
:math:`b_i`), which estimates :math:`E_0[\hat r] = 1` when the events are drawn from class 0:
a value away from 1 means a mis-normalised ratio, which a caller should not rescale away unseen.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..exceptions import ConfigError, NonFiniteOutputError, ShapeMismatchError

__all__ = ["classifier_weights", "ClassifierWeights", "WeightClippingWarning"]


class WeightClippingWarning(UserWarning):
    """Some classifier weights fell outside ``[w_min, w_max]`` and were clipped (the count is in the message and result)."""


@dataclass(frozen=True, eq=False)
class ClassifierWeights:
    r"""Per-event weights from a classifier, with what clipping did to them.

    Attributes:
        weights: Final weights :math:`b_i\,r_i`, ``(N,)`` float64 (:math:`r_i` if no base weights).
        ratio: Clipped density ratio :math:`r_i = \min(\max(e^{f_i} W_0/W_1, w_\mathrm{min}), w_\mathrm{max})`, ``(N,)``.
        n_clipped_low: Events whose ratio was raised to ``w_min``.
        n_clipped_high: Events whose ratio was lowered to ``w_max``.
        w_min, w_max: The clipping range.
        effective_sample_size: :math:`(\sum_i w_i)^2/\sum_i w_i^2` of ``weights``.
        normalisation: :math:`\sum_i b_i r_i / \sum_i b_i` (1 for a normalised ratio on class-0 events).
        normalisation_error: Its statistical error :math:`\sqrt{\sum_i b_i^2 (r_i - \bar r)^2} / \sum_i b_i`.
    """

    weights: Tensor
    ratio: Tensor
    n_clipped_low: int
    n_clipped_high: int
    w_min: float
    w_max: float
    effective_sample_size: float
    normalisation: float
    normalisation_error: float

    @property
    def n_clipped(self) -> int:
        """Events clipped at either end."""
        return self.n_clipped_low + self.n_clipped_high

    def to_dict(self) -> dict[str, float | int]:
        """The scalar summary (not the per-event tensors), JSON-able."""
        return {"n_events": int(self.weights.numel()), "n_clipped_low": self.n_clipped_low, "n_clipped_high": self.n_clipped_high,
                "w_min": self.w_min, "w_max": self.w_max, "effective_sample_size": self.effective_sample_size,
                "normalisation": self.normalisation, "normalisation_error": self.normalisation_error}


def _vector(value: Any, name: str, n: int | None, device: torch.device | None) -> Tensor:
    t = torch.as_tensor(value, device=device)
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ShapeMismatchError(f"classifier_weights: {name} must be real numbers, got dtype {t.dtype}.")
    if t.dim() != 1 or (n is not None and t.shape[0] != n):
        raise ShapeMismatchError(f"classifier_weights: {name} must be one value per event, shape ({n if n is not None else 'N'},); "
                                 f"got {tuple(t.shape)}.")
    return t.to(torch.float64)


def classifier_weights(
    logit: Any,
    *,
    class_totals: Any = (1.0, 1.0),
    base_weights: Any = None,
    w_min: float = 0.0,
    w_max: float = math.inf,
) -> ClassifierWeights:
    r"""Per-event weights :math:`w_i = b_i\,[e^{f_i} W_0/W_1]_{w_\mathrm{min}}^{w_\mathrm{max}}` from classifier logits.

    Args:
        logit: Classifier logits :math:`f_i` (or learned :math:`\log\hat r`) of the events to reweight, ``(N,)``.
        class_totals: :math:`(W_0, W_1)`, the weighted totals of class 0 and class 1 in the
            classifier's training data (:attr:`Classifier.class_totals <sbilab.estimators.Classifier>`);
            ``(1, 1)`` for balanced classes or a log-ratio.
        base_weights: Weights :math:`b_i` the events already carry, ``(N,)`` (e.g. OmniFold's prior
            weights); the result's ``weights`` are :math:`b_i r_i`.
        w_min, w_max: Clipping range of the ratio :math:`r_i`, ``0 <= w_min < w_max``; the
            default ``[0, inf)`` clips nothing.

    Returns:
        :class:`ClassifierWeights` (weights, clipped ratio, clipping counts, effective sample
        size, normalisation).

    Warns:
        WeightClippingWarning: some ratios were clipped (counts and range in the message).

    Raises:
        NonFiniteOutputError: a logit is NaN/inf, or a ratio overflows float64 with ``w_max = inf``.
        ShapeMismatchError: ``logit`` or ``base_weights`` not one real value per event.
        ConfigError: bad clipping range or class totals.

    Example:
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     res = classifier_weights(torch.tensor([-3.0, 0.0, 3.0]), class_totals=(2.0, 1.0), w_max=10.0)
        >>> [round(v, 3) for v in res.weights.tolist()], res.n_clipped_high, caught[0].category.__name__
        ([0.1, 2.0, 10.0], 1, 'WeightClippingWarning')
    """
    f = _vector(logit, "logit", None, None)
    bad = ~torch.isfinite(f)
    if bool(bad.any()):
        raise NonFiniteOutputError(f"classifier_weights: {int(bad.sum())} of {f.numel()} logits are NaN/inf (first at row "
                                   f"{int(torch.nonzero(bad)[0, 0])}); the classifier has diverged or saw inputs far from its "
                                   "training range. Fix the classifier; weights are never replaced silently.")
    b = None if base_weights is None else _vector(base_weights, "base_weights", f.numel(), f.device)
    if b is not None and not bool(torch.isfinite(b).all()):
        raise ShapeMismatchError("classifier_weights: base_weights hold NaN or inf values.")
    totals = [float(v) for v in torch.as_tensor(class_totals, dtype=torch.float64).reshape(-1).tolist()]
    if len(totals) != 2 or not all(math.isfinite(v) and v > 0 for v in totals):
        raise ConfigError(f"classifier_weights: class_totals must be two positive numbers (W0, W1), got {totals}.")
    w_min, w_max = float(w_min), float(w_max)
    if not (0.0 <= w_min < w_max) or math.isnan(w_max) or math.isinf(w_min):
        raise ConfigError(f"classifier_weights: need 0 <= w_min < w_max, got w_min={w_min}, w_max={w_max}.")
    log_r = f + math.log(totals[0] / totals[1])
    low = math.log(w_min) if w_min > 0 else -math.inf
    high = math.log(w_max) if math.isfinite(w_max) else math.inf
    is_low, is_high = log_r < low, log_r > high
    n_low, n_high = int(is_low.sum()), int(is_high.sum())
    ratio = torch.where(is_high, w_max, torch.where(is_low, w_min, log_r.clamp(min=low, max=high).exp()))  # bounds exact
    if not bool(torch.isfinite(ratio).all()):
        raise NonFiniteOutputError(f"classifier_weights: exp(logit) overflows float64 for {int((~torch.isfinite(ratio)).sum())} "
                                   f"events (largest logit {float(f.max()):.4g}); set a finite w_max.")
    if n_low or n_high:
        warnings.warn(f"classifier_weights: clipped {n_low} of {f.numel()} ratios up to w_min = {w_min:g} and {n_high} down to "
                      f"w_max = {w_max:g}; these events' weights are not the classifier's.", WeightClippingWarning, stacklevel=2)
    base = torch.ones_like(ratio) if b is None else b
    weights = base * ratio
    total, square = float(weights.sum()), float((weights**2).sum())
    norm_b = float(base.sum())
    mean = float((base * ratio).sum()) / norm_b if norm_b != 0 else math.nan
    error = math.sqrt(float((base**2 * (ratio - mean) ** 2).sum())) / abs(norm_b) if norm_b != 0 else math.nan
    return ClassifierWeights(
        weights=weights, ratio=ratio, n_clipped_low=n_low, n_clipped_high=n_high, w_min=w_min, w_max=w_max,
        effective_sample_size=total**2 / square if square > 0 else 0.0, normalisation=mean, normalisation_error=error,
    )
