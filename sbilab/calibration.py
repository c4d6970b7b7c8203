r"""Classifier calibration and the reweighting closure test.

A classifier trained to separate samples at :math:`\theta` (label 1) from samples at the
reference (label 0) estimates :math:`s(x) = p_\theta/(p_\theta + p_\mathrm{ref})` only if it is
perfectly trained; CARL (Cranmer, Pavez, Louppe, arXiv:1506.02169) notes that *any* monotonic
function of the likelihood ratio can be turned into the ratio by calibration: with
:math:`\hat s` the classifier output,

.. math::
    \hat r(x) = \frac{\hat p(\hat s(x) \mid \theta)}{\hat p(\hat s(x) \mid \theta_\mathrm{ref})},

estimated by histograms of :math:`\hat s` or by isotonic regression of the label on
:math:`\hat s`. The closure test (1506.02169, sec. 5; used throughout MadMiner/OmniFold)
trains a fresh classifier between the reference sample reweighted by :math:`\hat r` and the
target sample: if :math:`\hat r` is right the two are indistinguishable and the AUC is 0.5.
The classifier sees the reweighted reference rescaled to the target's total, so the AUC tests
the *shape* only; the normalisation :math:`E_\mathrm{ref}[\hat r] = 1` is tested separately
(the plain mean over the reference sample, or, given :math:`\log\hat r` on the target events too,
the bridge estimate of :func:`sbilab.simulators.checks.bridge_test`, robust to heavy tails) and
a mis-normalised ratio fails the test.

Every density ratio obeys :math:`E_\mathrm{ref}[r(x|\theta)] = 1` at every θ; a learned one
does so only up to a θ-dependent offset :math:`\log Z(\theta) = \log E_\mathrm{ref}[\hat r(x|\theta)]`
of a few per cent (a classifier's logit is calibrated per θ only to the precision of its
training). An unbinned fit of N events adds :math:`N \log Z(\theta)` to :math:`\log L`, which for
:math:`N \gtrsim 10^3` outweighs the information in the events and drives the fit to the wrong
point. :class:`NormalizedLogRatio` divides it out on a reference sample:
:math:`\log\hat r(x|\theta) - \log\frac1M\sum_j \hat r(x^\mathrm{ref}_j|\theta)`. It is the
*correction*; :func:`sbilab.stats.ratio_normalisation` is the *check* (is :math:`Z(\theta) = 1`
within errors, with the bridge estimate for heavy tails) and, run on a
:class:`NormalizedLogRatio`, confirms the correction on an independent sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .exceptions import ConfigError, ShapeMismatchError
from .simulators.checks import bridge_test, mean_test

__all__ = ["HistogramCalibrator", "IsotonicCalibrator", "weighted_auc", "ClosureResult", "closure_test", "NormalizedLogRatio"]


def _np(values: Tensor | np.ndarray, name: str) -> np.ndarray:
    array = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ShapeMismatchError(f"{name} must be one value per event, shape (N,); got {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise ShapeMismatchError(f"{name} holds NaN or inf values; remove these events first.")
    return array


class HistogramCalibrator:
    r"""Ratio of histograms of a classifier output, :math:`\hat r = h_\theta(s)/h_\mathrm{ref}(s)`.

    Args:
        score_num: Classifier outputs (any monotonic score, e.g. logits) on events at θ, ``(N1,)``.
        score_den: The same on events at the reference, ``(N0,)``.
        bins: Number of bins; edges are quantiles of the pooled scores so every bin is populated.
        weights_num, weights_den: Optional event weights.
    """

    def __init__(self, score_num, score_den, *, bins: int = 50, weights_num=None, weights_den=None) -> None:
        s1, s0 = _np(score_num, "score_num"), _np(score_den, "score_den")
        w1 = np.ones_like(s1) if weights_num is None else _np(weights_num, "weights_num")
        w0 = np.ones_like(s0) if weights_den is None else _np(weights_den, "weights_den")
        pooled = np.concatenate([s1, s0])
        edges = np.unique(np.quantile(pooled, np.linspace(0, 1, bins + 1)))
        edges[0], edges[-1] = -np.inf, np.inf
        h1, _ = np.histogram(s1, edges, weights=w1)
        h0, _ = np.histogram(s0, edges, weights=w0)
        # half-count regularisation keeps empty bins finite
        self.edges = edges
        self.log_ratio_per_bin = np.log((h1 + 0.5) / (w1.sum() + 0.5 * len(h1))) - np.log((h0 + 0.5) / (w0.sum() + 0.5 * len(h0)))

    def __call__(self, score) -> Tensor:
        """Calibrated log r̂ for classifier outputs ``score (N,)``."""
        s = _np(score, "score")
        idx = np.clip(np.searchsorted(self.edges, s, side="right") - 1, 0, len(self.log_ratio_per_bin) - 1)
        return torch.as_tensor(self.log_ratio_per_bin[idx])


def _pava(y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: non-decreasing fit of ``y`` (sorted by score) with weights ``w``."""
    values: list[float] = []
    weights: list[float] = []
    counts: list[int] = []
    for yi, wi in zip(y, w):
        values.append(yi)
        weights.append(wi)
        counts.append(1)
        while len(values) > 1 and values[-2] >= values[-1]:
            wsum = weights[-2] + weights[-1]
            merged = (values[-2] * weights[-2] + values[-1] * weights[-1]) / wsum
            counts[-2] += counts[-1]
            values[-2], weights[-2] = merged, wsum
            values.pop(), weights.pop(), counts.pop()
    return np.asarray(values), np.asarray(counts)


class IsotonicCalibrator:
    r"""Isotonic regression of the label on the classifier output.

    :math:`\hat P(\text{label}=1 \mid s)` is the monotone step function closest to the labels
    (pool-adjacent-violators); the calibrated log-ratio is its logit minus the log of the class
    prior ratio :math:`W_1/W_0`. Scores are pooled into at most ``max_blocks`` quantile blocks
    first so the fit is fast for large samples.
    """

    def __init__(self, score_num, score_den, *, weights_num=None, weights_den=None, max_blocks: int = 2000, eps: float = 1e-4) -> None:
        s1, s0 = _np(score_num, "score_num"), _np(score_den, "score_den")
        w1 = np.ones_like(s1) if weights_num is None else _np(weights_num, "weights_num")
        w0 = np.ones_like(s0) if weights_den is None else _np(weights_den, "weights_den")
        s = np.concatenate([s1, s0])
        y = np.concatenate([np.ones_like(s1), np.zeros_like(s0)])
        w = np.concatenate([w1, w0])
        order = np.argsort(s, kind="stable")
        s, y, w = s[order], y[order], w[order]
        blocks = np.array_split(np.arange(len(s)), min(max_blocks, len(s)))
        bw = np.array([w[b].sum() for b in blocks])
        by = np.array([(y[b] * w[b]).sum() for b in blocks]) / bw
        bs = np.array([s[b].mean() for b in blocks])
        fitted, counts = _pava(by, bw)
        self.knots = np.array([bs[start:start + c].mean() for start, c in zip(np.cumsum(counts) - counts, counts)])
        p = np.clip(fitted, eps, 1 - eps)
        self.log_ratio_at_knots = np.log(p / (1 - p)) - np.log(w1.sum() / w0.sum())

    def __call__(self, score) -> Tensor:
        """Calibrated log r̂ for classifier outputs ``score (N,)`` (linear between knots)."""
        s = _np(score, "score")
        return torch.as_tensor(np.interp(s, self.knots, self.log_ratio_at_knots))


def weighted_auc(score_pos, score_neg, *, weights_pos=None, weights_neg=None) -> float:
    r"""Area under the ROC curve with event weights (Mann–Whitney, ties counted half)."""
    s1, s0 = _np(score_pos, "score_pos"), _np(score_neg, "score_neg")
    w1 = np.ones_like(s1) if weights_pos is None else _np(weights_pos, "weights_pos")
    w0 = np.ones_like(s0) if weights_neg is None else _np(weights_neg, "weights_neg")
    order = np.argsort(s0, kind="stable")
    s0, w0 = s0[order], w0[order]
    cum = np.concatenate([[0.0], np.cumsum(w0)])
    below = cum[np.searchsorted(s0, s1, side="left")]
    ties = cum[np.searchsorted(s0, s1, side="right")] - below
    return float(np.sum(w1 * (below + 0.5 * ties)) / (w1.sum() * w0.sum()))


@dataclass(frozen=True)
class ClosureResult:
    r"""Outcome of the reweighting closure test.

    Attributes:
        auc: Weighted AUC of the fresh classifier on held-out events (0.5 = perfect closure).
        auc_error: Its statistical error (standard deviation over bootstrap replicas).
        passed: The shape passed and the normalisation did not fail (``shape_passed and
            normalisation_passed is not False``).
        tolerance: The systematic allowance on the AUC.
        normalisation: Estimate of :math:`E_\mathrm{ref}[\hat r]` (1 for a normalised ratio): the
            plain mean :math:`\sum_i w_i \hat r_i / \sum_i w_i` over the reference sample, or the
            bridge estimate when ``log_ratio_target`` was given (``normalisation_method``).
        normalisation_error: Its statistical error.
        effective_sample_size: Kish's :math:`(\sum w)^2/\sum w^2` of the reweighted reference.
        shape_passed: ``|auc - 0.5| <= tolerance_sigmas * auc_error + tolerance``.
        normalisation_passed: ``|normalisation - 1| <= tolerance_sigmas * normalisation_error +
            normalisation_tolerance``; ``None`` when not judged (``normalised=False``, or a plain
            mean whose terms have a tail index >= 0.5, see :mod:`sbilab.simulators.checks`).
        normalisation_tolerance: The systematic allowance on the normalisation.
        normalisation_method: ``"bridge"``, ``"mean"`` or ``"none"`` (not tested).
        normalisation_tail_index: Hill tail index of the plain mean's terms.
    """

    auc: float
    auc_error: float
    passed: bool
    tolerance: float
    normalisation: float = math.nan
    normalisation_error: float = math.nan
    effective_sample_size: float = math.nan
    shape_passed: bool = True
    normalisation_passed: bool | None = None
    normalisation_tolerance: float = math.nan
    normalisation_method: str = "none"
    normalisation_tail_index: float = math.nan

    def to_dict(self) -> dict[str, float | bool | str | None]:
        return dict(self.__dict__)


def closure_test(
    reference: Tensor,
    target: Tensor,
    log_ratio: Tensor,
    *,
    weights_reference: Tensor | None = None,
    weights_target: Tensor | None = None,
    hidden: tuple[int, ...] = (64, 64),
    epochs: int = 30,
    test_fraction: float = 0.5,
    n_bootstrap: int = 200,
    tolerance: float = 0.01,
    tolerance_sigmas: float = 3.0,
    normalised: bool = True,
    normalisation_tolerance: float = 0.02,
    log_ratio_target: Tensor | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ClosureResult:
    r"""Reweighting closure test: can a fresh classifier tell ``reference × r̂`` from ``target``?

    Args:
        reference: Observables of the reference sample (e.g. drawn at :math:`\theta_\mathrm{ref}`), ``(N0, D)``.
        target: Observables of the target sample (drawn at :math:`\theta`), ``(N1, D)``.
        log_ratio: :math:`\log\hat r(x|\theta)` of every reference event, ``(N0,)``; the reference
            is reweighted by :math:`\hat r` (normalised to the target's total weight).
        test_fraction: Share of each sample held out to evaluate the AUC.
        n_bootstrap: Bootstrap replicas of the held-out AUC for its statistical error.
        tolerance: Systematic allowance on :math:`|AUC - 0.5|` added to ``tolerance_sigmas``
            times the statistical error.
        normalised: Whether :math:`\hat r` is a normalised density ratio, :math:`E_\mathrm{ref}[\hat r] = 1`
            (``False`` for weights with an arbitrary total, e.g. unfolded weights: not tested).
        normalisation_tolerance: Systematic allowance on :math:`|E_\mathrm{ref}[\hat r] - 1|`, added
            to ``tolerance_sigmas`` times its statistical error.
        log_ratio_target: :math:`\log\hat r(x|\theta)` of every target event, ``(N1,)``; with it the
            normalisation is the bridge estimate, whose error holds however heavy the tail of
            :math:`\hat r` (the plain mean over the reference misses rare large ratios).

    The reference is reweighted by :func:`~sbilab.estimators.classifier_weights` (the one path
    from a classifier or log-ratio to weights) and the fresh classifier is a
    :class:`~sbilab.estimators.Classifier` trained by :func:`~sbilab.training.fit`.

    Returns:
        :class:`ClosureResult`; AUC 0.5 means the reweighted reference is indistinguishable
        in shape from the target; ``normalisation`` (1 for a normalised ratio) says whether
        :math:`\hat r` also has the right total, which the AUC cannot see; ``passed`` needs both.

    Raises:
        ShapeMismatchError: samples of different widths, or ``log_ratio`` (``log_ratio_target``)
            not one value per reference (target) event, or non-finite values.
        ConfigError: a negative ``normalisation_tolerance``.
    """
    if not normalisation_tolerance >= 0:
        raise ConfigError(f"closure_test: normalisation_tolerance = {normalisation_tolerance}; give a non-negative allowance, e.g. 0.02.")
    from .estimators import Classifier, carl_loss, classifier_training_data, classifier_weights
    from .training import fit

    x0 = torch.as_tensor(reference, dtype=torch.float32)
    x1 = torch.as_tensor(target, dtype=torch.float32)
    x0 = x0.reshape(-1, 1) if x0.dim() == 1 else x0
    x1 = x1.reshape(-1, 1) if x1.dim() == 1 else x1
    if x0.shape[1] != x1.shape[1]:
        raise ShapeMismatchError(f"closure_test: reference has {x0.shape[1]} observables, target {x1.shape[1]}; they must match.")
    lr = torch.as_tensor(_np(log_ratio, "log_ratio"))
    if lr.numel() != x0.shape[0]:
        raise ShapeMismatchError(f"closure_test: log_ratio has {lr.numel()} values for {x0.shape[0]} reference events.")
    w0 = torch.ones(len(x0), dtype=torch.float64) if weights_reference is None else torch.as_tensor(_np(weights_reference, "weights_reference"))
    w1 = torch.ones(len(x1), dtype=torch.float64) if weights_target is None else torch.as_tensor(_np(weights_target, "weights_target"))
    reweighted = classifier_weights(lr, base_weights=w0)  # the one classifier/ratio -> weights path; reports the normalisation
    norm = _normalisation(lr, w0, w1, log_ratio_target, len(x1), normalised, tolerance_sigmas, normalisation_tolerance)
    w0 = reweighted.weights * (w1.sum() / reweighted.weights.sum())
    g = torch.Generator().manual_seed(seed)
    p0, p1 = torch.randperm(len(x0), generator=g), torch.randperm(len(x1), generator=g)
    n0, n1 = int(len(x0) * test_fraction), int(len(x1) * test_fraction)
    test0, train0, test1, train1 = p0[:n0], p0[n0:], p1[:n1], p1[n1:]
    train = classifier_training_data(x0[train0], x1[train1], weights0=w0[train0].float(), weights1=w1[train1].float())
    model = Classifier.from_events(train, hidden=tuple(hidden), seed=seed)
    fit(model, carl_loss, train, epochs=epochs, seed=seed, progress=progress, patience=5, min_delta=0.0, device="cpu")
    with torch.no_grad():
        s0, s1 = model(x0[test0]).double().numpy(), model(x1[test1]).double().numpy()
    tw0, tw1 = w0[test0].numpy(), w1[test1].numpy()
    auc = weighted_auc(s1, s0, weights_pos=tw1, weights_neg=tw0)
    rng = np.random.default_rng(seed)
    replicas = []
    for _ in range(n_bootstrap):
        i1, i0 = rng.integers(0, len(s1), len(s1)), rng.integers(0, len(s0), len(s0))
        replicas.append(weighted_auc(s1[i1], s0[i0], weights_pos=tw1[i1], weights_neg=tw0[i0]))
    error = float(np.std(replicas))
    shape_passed = abs(auc - 0.5) <= tolerance_sigmas * error + tolerance
    return ClosureResult(auc=auc, auc_error=error, passed=shape_passed and norm["normalisation_passed"] is not False,
                         tolerance=tolerance, effective_sample_size=reweighted.effective_sample_size, shape_passed=shape_passed,
                         normalisation_tolerance=normalisation_tolerance, **norm)


def _normalisation(log_r: Tensor, w0: Tensor, w1: Tensor, log_r_target: Tensor | None, n_target: int, normalised: bool,
                   sigmas: float, tolerance: float) -> dict:
    """The normalisation fields of :class:`ClosureResult` (plain mean, or bridge estimate with ``log_r_target``)."""
    plain = mean_test(log_r.exp(), expected=1.0, weights=w0)
    test = plain
    if log_r_target is not None:
        lt = torch.as_tensor(_np(log_r_target, "log_ratio_target"))
        if lt.numel() != n_target:
            raise ShapeMismatchError(f"closure_test: log_ratio_target has {lt.numel()} values for {n_target} target events.")
        test = bridge_test(log_r, lt, weights_reference=w0, weights_theta=w1)
    judged = normalised and test.judged
    verdict = (abs(test.mean - 1.0) <= sigmas * test.error + tolerance) if judged else None
    method = "none" if not normalised else ("bridge" if log_r_target is not None else "mean")
    return {"normalisation": test.mean, "normalisation_error": test.error, "normalisation_passed": verdict,
            "normalisation_method": method, "normalisation_tail_index": plain.tail_index}


class NormalizedLogRatio(nn.Module):
    r"""A learned log-ratio normalised on a reference sample, so that :math:`E_\mathrm{ref}[\hat r] = 1` at every θ.

    .. math:: \log\tilde r(x|\theta) = \log\hat r(x|\theta) - \log Z(\theta), \qquad
        Z(\theta) = \frac1M\sum_{j=1}^M \hat r(x^\mathrm{ref}_j|\theta),

    with :math:`x^\mathrm{ref}_j` drawn at the estimator's reference point (independent of its
    training events). :math:`\tilde r\,p_\mathrm{ref}` is then a normalised density at every θ
    (module docstring), and the normalisation's own Monte Carlo error moves an unbinned fit of
    N events by about :math:`\sqrt{N/M}` of its standard deviation (use :math:`M \gg N`).
    Differentiable in θ; plugs into :class:`~sbilab.stats.UnbinnedLikelihood` like the estimator.

    Args:
        log_ratio: ``log_ratio(x, theta[, mask]) -> (N,)``, e.g. a trained ``RatioEstimator``.
        reference: Events drawn at the reference point, ``(M, D)`` or padded sets ``(M, L, F)``.
        reference_mask: ``(M, L)`` for sets.
        batch_size: Reference events per evaluation.

    Example:
        >>> est = lambda x, th: x[:, 0] * th[:, 0]  # log r = θx: E_ref[e^{θx}] = e^{θ²/2} for x ~ N(0, 1)
        >>> norm = NormalizedLogRatio(est, torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        >>> round(norm.log_normalization(torch.tensor([[0.5]], dtype=torch.float64)).item(), 2)  # θ²/2 = 0.125
        0.12
    """

    def __init__(self, log_ratio: nn.Module | Callable[..., Tensor], reference: Tensor, *, reference_mask: Tensor | None = None,
                 batch_size: int = 65536) -> None:
        super().__init__()
        reference = torch.as_tensor(reference)
        if reference.dim() not in (2, 3) or len(reference) == 0:
            raise ShapeMismatchError(f"NormalizedLogRatio: reference must be events (M, D) or sets (M, L, F), got shape {tuple(reference.shape)}.")
        if (reference_mask is None) != (reference.dim() == 2):
            raise ShapeMismatchError("NormalizedLogRatio: padded-set references (M, L, F) need reference_mask (M, L); vector references take none.")
        self.log_ratio = log_ratio
        self.register_buffer("reference", reference)
        self.register_buffer("reference_mask", None if reference_mask is None else torch.as_tensor(reference_mask).bool())
        self.batch_size = int(batch_size)

    def log_normalization(self, theta: Tensor) -> Tensor:
        r""":math:`\log Z(\theta)` for every row of ``theta (U, P)``, ``(U,)`` (differentiable)."""
        m = len(self.reference)
        out = []
        for row in theta:
            parts = []
            for s in range(0, m, self.batch_size):
                x = self.reference[s:s + self.batch_size].to(theta.dtype)
                th = row.unsqueeze(0).expand(len(x), -1)
                parts.append(self.log_ratio(x, th) if self.reference_mask is None
                             else self.log_ratio(x, th, mask=self.reference_mask[s:s + self.batch_size]))
            out.append(torch.logsumexp(torch.cat(parts).to(theta.dtype), 0) - math.log(m))
        return torch.stack(out)

    def forward(self, x: Tensor, theta: Tensor, mask: Tensor | None = None) -> Tensor:
        r""":math:`\log\tilde r(x|\theta)`: ``x (N, D)`` or ``(N, L, F)`` with ``mask``, ``theta (N, P)`` -> ``(N,)``."""
        values = self.log_ratio(x, theta) if mask is None else self.log_ratio(x, theta, mask=mask)
        unique, inverse = torch.unique(theta.detach(), dim=0, return_inverse=True)
        first = torch.full((len(unique),), len(theta), dtype=torch.long, device=theta.device)
        first = first.scatter_reduce(0, inverse, torch.arange(len(theta), device=theta.device), reduce="amin")
        return values - self.log_normalization(theta[first]).to(values.dtype)[inverse]
