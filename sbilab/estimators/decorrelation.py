r"""Distance correlation and the decorrelation losses DisCo and Double-DisCo.

**Distance correlation** (Székely, Rizzo, Bakirov, Ann. Statist. 35 (2007) 2769). For samples
:math:`(x_i, y_i)` with weights :math:`w_i` (normalised, :math:`\sum_i w_i = 1`), the pairwise
distances :math:`a_{ij} = \lVert x_i - x_j\rVert`, :math:`b_{ij} = \lVert y_i - y_j\rVert` are
double-centred with weighted means,

.. math::
    A_{ij} = a_{ij} - \bar a_{i\cdot} - \bar a_{\cdot j} + \bar a_{\cdot\cdot}, \qquad
    \bar a_{i\cdot} = \textstyle\sum_j w_j a_{ij}, \quad \bar a_{\cdot\cdot} = \sum_{ij} w_i w_j a_{ij},

and the (V-statistic) squared distance covariance and correlation are

.. math::
    \mathrm{dCov}^2(x, y) = \sum_{ij} w_i w_j A_{ij} B_{ij}, \qquad
    \mathrm{dCor}^2(x, y) = \frac{\mathrm{dCov}^2(x, y)}{\sqrt{\mathrm{dCov}^2(x, x)\,\mathrm{dCov}^2(y, y)}},

the weighted form used by DisCo (Kasieczka, Shih, arXiv:2001.05310, eq. 2.2). It lies in [0, 1]
and is 0 exactly when x and y are independent (in the population). Its bias is
:math:`O(1/n)`; the unbiased U-statistic (Székely, Rizzo, Ann. Statist. 42 (2014) 2382) replaces
:math:`A` by the U-centred :math:`\tilde A_{ij} = a_{ij} - \frac{a_{i\cdot}}{n-2} - \frac{a_{\cdot j}}{n-2}
+ \frac{a_{\cdot\cdot}}{(n-1)(n-2)}` (:math:`i \ne j`, sums unweighted) and averages
:math:`\tilde A_{ij}\tilde B_{ij}` over :math:`i \ne j` with :math:`1/(n(n-3))`; it can be negative.
Both cost :math:`O(n^2)` time and memory per sample, evaluated for a whole stack of samples at once.

**DisCo** (arXiv:2001.05310): a classifier :math:`f` trained with
:math:`L = \mathrm{BCE} + \lambda\,\mathrm{dCor}^2_{y=0}(\sigma(f), m)`, the second term over the
background (label 0) events of each batch and their weights only, with :math:`m` the events'
``spectator`` (never an input of the network). **Double-DisCo** (ABCDisCo, Kasieczka, Nachman,
Schwartz, Shih, arXiv:2007.14400): two classifiers trained together with
:math:`L = \mathrm{BCE}_1 + \mathrm{BCE}_2 + \lambda\,\mathrm{dCor}^2_{y=0}(\sigma(f_1), \sigma(f_2))`,
so that their two scores make the two independent axes of an ABCD estimate.

Both losses return per-event values (``fit`` forms the weighted mean): the batch's
:math:`\lambda\,\mathrm{dCor}^2` is added to every event's cross-entropy, so the weighted mean
is exactly :math:`\overline{\mathrm{BCE}} + \lambda\,\mathrm{dCor}^2`. Ensembles
(``fit(Ensemble(classifier, K), ...)``) get one dCor² per member.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..events import Events
from ..exceptions import ConfigError, ShapeMismatchError
from ..registry import register_publishable
from .classifier import Classifier
from .losses import _forward, _require, register_loss

__all__ = [
    "distance_correlation",
    "distance_covariance",
    "disco_loss",
    "double_disco_loss",
    "check_spectator_not_input",
    "ClassifierPair",
]


def _as_columns(t: Tensor, name: str) -> Tensor:
    """``(N,)`` becomes ``(N, 1)``; ``(..., N, D)`` is kept."""
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t, dtype=torch.get_default_dtype())
    if t.dim() == 1:
        return t.unsqueeze(-1)
    if t.dim() < 1:
        raise ShapeMismatchError(f"distance_correlation: {name} must be (N,) or (..., N, D), got a scalar.")
    return t


def _distances(t: Tensor) -> Tensor:
    """Pairwise Euclidean distances ``(..., N, D) -> (..., N, N)`` (exact zeros on the diagonal)."""
    if t.shape[-1] == 1:
        return (t - t.transpose(-1, -2)).abs()
    return torch.cdist(t, t)


def _u_moments(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""U-statistics from the row sums :math:`a_{i\cdot}` and totals :math:`a_{\cdot\cdot}` (zero diagonals):
    :math:`\sum_{i\ne j}\tilde A_{ij}\tilde B_{ij} = \sum_{ij} a_{ij}b_{ij} - \frac{2}{n-2}\sum_i a_{i\cdot}b_{i\cdot}
    + \frac{a_{\cdot\cdot}b_{\cdot\cdot}}{(n-1)(n-2)}` (Székely & Rizzo 2014), divided by :math:`n(n-3)`."""
    n = a.shape[-1]
    ra, rb = a.sum(-1), b.sum(-1)
    ta, tb = ra.sum(-1), rb.sum(-1)

    def pair(u: Tensor, v: Tensor, ru: Tensor, rv: Tensor, tu: Tensor, tv: Tensor) -> Tensor:
        return ((u * v).sum((-1, -2)) - 2 * (ru * rv).sum(-1) / (n - 2) + tu * tv / ((n - 1) * (n - 2))) / (n * (n - 3))

    return pair(a, b, ra, rb, ta, tb), pair(a, a, ra, ra, ta, ta), pair(b, b, rb, rb, tb, tb)


def _v_moments(a: Tensor, b: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Weighted V-statistics :math:`(\mathrm{dCov}^2(x,y), \mathrm{dCov}^2(x,x), \mathrm{dCov}^2(y,y))` without centred matrices.

    Double centring makes :math:`\sum_j w_j B_{ij} = 0`, hence
    :math:`\sum_{ij} w_i w_j A_{ij} B_{ij} = \sum_{ij} w_i w_j a_{ij} b_{ij} - 2 \sum_i w_i \bar a_{i\cdot} \bar b_{i\cdot}
    + \bar a_{\cdot\cdot} \bar b_{\cdot\cdot}`: five :math:`O(n^2)` passes instead of a dozen.
    """
    wc = w.unsqueeze(-1)
    ra, rb = (a @ wc).squeeze(-1), (b @ wc).squeeze(-1)  # weighted row means
    ta, tb = (w * ra).sum(-1), (w * rb).sum(-1)

    def pair(u: Tensor, v: Tensor, ru: Tensor, rv: Tensor, tu: Tensor, tv: Tensor) -> Tensor:
        return (w * ((u * v) @ wc).squeeze(-1)).sum(-1) - 2 * (w * ru * rv).sum(-1) + tu * tv

    return pair(a, b, ra, rb, ta, tb), pair(a, a, ra, ra, ta, ta), pair(b, b, rb, rb, tb, tb)


def _prepare(x: Any, y: Any, weights: Any, unbiased: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    x, y = _as_columns(x, "x"), _as_columns(y, "y")
    if x.shape[-2] != y.shape[-2]:
        raise ShapeMismatchError(f"distance_correlation: x has {x.shape[-2]} events and y {y.shape[-2]}; pair every x with one y.")
    dtype = torch.promote_types(x.dtype, y.dtype)
    x, y = x.to(dtype), y.to(dtype)
    batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    x = x.expand(*batch, *x.shape[-2:])
    y = y.expand(*batch, *y.shape[-2:])
    n = x.shape[-2]
    if unbiased:
        if weights is not None:
            raise ConfigError("distance_correlation: the unbiased U-statistic is defined for unweighted samples; "
                              "pass weights=None or unbiased=False (the weighted V-statistic of DisCo).")
        if n < 4:
            raise ShapeMismatchError(f"distance_correlation: the U-statistic needs at least 4 events, got {n}.")
        return x, y, None
    if n < 2:
        raise ShapeMismatchError(f"distance_correlation: needs at least 2 events, got {n}.")
    w = torch.ones(n, dtype=dtype, device=x.device) if weights is None else torch.as_tensor(weights).to(dtype=dtype, device=x.device)
    if w.shape[-1] != n:
        raise ShapeMismatchError(f"distance_correlation: weights have {w.shape[-1]} entries for {n} events.")
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ConfigError("distance_correlation: weights must be finite and >= 0 (distance correlation needs a probability measure).")
    w = w.expand(*batch, n)
    return x, y, w / w.sum(-1, keepdim=True)


def _moments(x: Tensor, y: Tensor, w: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    a, b = _distances(x), _distances(y)
    return _u_moments(a, b) if w is None else _v_moments(a, b, w)


def distance_covariance(x: Any, y: Any, weights: Any = None, *, unbiased: bool = False) -> Tensor:
    r"""Squared distance covariance :math:`\mathrm{dCov}^2(x, y)` (see the module docstring).

    Args:
        x: ``(N,)`` or ``(..., N, Dx)``.
        y: ``(N,)`` or ``(..., N, Dy)``; leading dimensions broadcast against ``x``'s.
        weights: ``(N,)`` or ``(..., N)`` non-negative event weights (V-statistic only).
        unbiased: The U-statistic instead of the V-statistic.

    Returns:
        ``(...)``: one value per sample of the stack (a 0-d tensor for single samples).
    """
    x, y, w = _prepare(x, y, weights, unbiased)
    return _moments(x, y, w)[0]


def distance_correlation(x: Any, y: Any, weights: Any = None, *, unbiased: bool = False, eps: float = 1e-12) -> Tensor:
    r"""Squared distance correlation :math:`\mathrm{dCor}^2(x, y)`, differentiable, for a stack of samples.

    Args:
        x: ``(N,)`` or ``(..., N, Dx)``, e.g. classifier scores ``(K, N, 1)`` of K ensemble members.
        y: ``(N,)`` or ``(..., N, Dy)``, e.g. the mass ``(N, 1)``; leading dimensions broadcast.
        weights: ``(N,)`` or ``(..., N)`` non-negative event weights (normalised internally).
        unbiased: Székely & Rizzo's U-statistic (unweighted only) instead of the V-statistic.
        eps: Added under the square root of the denominator (a constant variable has dCor² = 0).

    Returns:
        ``(...)``: dCor² per sample. For a bivariate normal with correlation ρ it converges to
        :func:`sbilab.anomaly.bivariate_normal_dcor2` (e.g. 0.206231 at ρ = 0.5).

    Raises:
        ShapeMismatchError: x and y hold different numbers of events, or too few events.
        ConfigError: negative or non-finite weights, or weights with ``unbiased=True``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(2000, generator=g, dtype=torch.float64)
        >>> round(float(distance_correlation(x, 2 * x + 1)), 6), bool(distance_correlation(x, x**2) > 0.1)
        (1.0, True)
    """
    x, y, w = _prepare(x, y, weights, unbiased)
    xy, xx, yy = _moments(x, y, w)
    return xy / torch.sqrt((xx * yy).clamp_min(0) + eps)


# ---------------------------------------------------------------------------- losses
def check_spectator_not_input(x: Tensor, spectator: Tensor) -> None:
    """Refuse a spectator column that equals a column of the network input ``x``.

    Args:
        x: ``(N, D)`` network inputs (sets ``(N, M, F)`` are not compared).
        spectator: ``(N, S)``.

    Raises:
        ConfigError: some spectator column is identical to some input column (a classifier that
            sees m cannot be decorrelated from m; drop the column from ``x``). A spectator that is
            a *function* of an input (log m) is not detected.
    """
    if x.dim() != 2:
        return
    same = (x.unsqueeze(-1) == spectator.to(x.dtype).unsqueeze(1)).all(dim=0)  # (D, S)
    if bool(same.any()):
        d, s = (int(i) for i in torch.nonzero(same)[0])
        raise ConfigError(f"spectator column {s} is identical to input column {d} of x; the variable to decorrelate from "
                          "must not be a classifier input: remove it from x and keep it only in Events.spectator.")


def _check_lambda(lam: float, loss: str) -> float:
    lam = float(lam)
    if not lam >= 0 or not math.isfinite(lam):
        raise ConfigError(f"{loss}: lam = {lam} must be finite and >= 0 (0 is plain cross-entropy; DisCo uses O(1-100)).")
    return lam


def _background_weights(batch: Events, like: Tensor) -> Tensor:
    """Weights ``(N,)`` of the background (label 0) events, zero for the others."""
    w = batch.weights_or_ones().to(like.dtype)
    return w * (batch.label.to(like.dtype) < 0.5)


def _penalty(u: Tensor, v: Tensor, w: Tensor, lam: float) -> Tensor:
    """``lam * dCor2(u, v)`` over the events with ``w > 0``; u ``(..., N, 1)``, v ``(..., N, S)`` -> ``(...)``."""
    keep = w > 0
    if lam == 0.0 or int(keep.sum()) < 2:
        return u.new_zeros(u.shape[:-2])
    return lam * distance_correlation(u[..., keep, :], v[..., keep, :], w[keep])


@register_loss("disco", estimator="classifier", needs=("label", "spectator"))
def disco_loss(model: nn.Module, batch: Events, *, lam: float = 10.0, probability: bool = True) -> Tensor:
    r"""DisCo: :math:`\mathrm{BCE} + \lambda\,\mathrm{dCor}^2(\sigma(f), m)` on background events (arXiv:2001.05310).

    Args:
        model: A classifier returning logits ``(N,)`` (or an ensemble, ``(K, N)``).
        batch: Events with ``label`` (0 = background) and ``spectator (N, S)`` = m.
        lam: :math:`\lambda \ge 0`.
        probability: Decorrelate :math:`\sigma(f)` (as the paper) or, if ``False``, the logit f.

    Returns:
        ``(N,)`` or ``(K, N)``: each event's cross-entropy plus the batch's :math:`\lambda\,\mathrm{dCor}^2`.

    Raises:
        MissingAugmentedDataError: no ``label`` or no ``spectator``.
        ConfigError: ``lam`` negative, or a spectator column is also an input column.
    """
    lam = _check_lambda(lam, "disco_loss")
    _require(batch, "disco")
    check_spectator_not_input(batch.x, batch.spectator)
    logit, _ = _forward(model, batch)
    ce = F.binary_cross_entropy_with_logits(logit, batch.label.expand_as(logit), reduction="none")
    score = torch.sigmoid(logit) if probability else logit
    penalty = _penalty(score.unsqueeze(-1), batch.spectator.to(score.dtype), _background_weights(batch, score), lam)
    return ce + penalty.unsqueeze(-1)


@register_loss("double_disco", estimator="classifier", needs=("label",))
def double_disco_loss(model: nn.Module, batch: Events, *, lam: float = 10.0, probability: bool = True) -> Tensor:
    r"""Double-DisCo: :math:`\mathrm{BCE}_1 + \mathrm{BCE}_2 + \lambda\,\mathrm{dCor}^2(\sigma(f_1), \sigma(f_2))` on background (arXiv:2007.14400).

    Args:
        model: A :class:`ClassifierPair` (logits ``(N, 2)``) or an ensemble of them (``(K, N, 2)``).
        batch: Events with ``label`` (0 = background).
        lam: :math:`\lambda \ge 0`.
        probability: Decorrelate the probabilities (default) or the logits.

    Returns:
        ``(N,)`` or ``(K, N)`` per-event losses.

    Raises:
        ShapeMismatchError: the model does not return two logits per event.
        ConfigError: ``lam`` negative.
    """
    lam = _check_lambda(lam, "double_disco_loss")
    _require(batch, "double_disco")
    logits, _ = _forward(model, batch)
    if logits.shape[-1] != 2 or logits.shape[-2] != len(batch):
        raise ShapeMismatchError(f"double_disco_loss: the model returned {tuple(logits.shape)}; it needs two logits per event, "
                                 "(N, 2): use ClassifierPair(first, second).")
    label = batch.label.unsqueeze(-1).expand_as(logits)
    ce = F.binary_cross_entropy_with_logits(logits, label, reduction="none").sum(-1)
    score = torch.sigmoid(logits) if probability else logits
    penalty = _penalty(score[..., :1], score[..., 1:], _background_weights(batch, score), lam)
    return ce + penalty.unsqueeze(-1)


@register_publishable
class ClassifierPair(nn.Module):
    r"""Two classifiers evaluated together, ``forward(x, theta=None, mask=None) -> logits (N, 2)`` (for Double-DisCo).

    Args:
        first, second: :class:`Classifier` s of the same inputs (e.g. both from
            ``Classifier.from_events(train, seed=...)`` with different seeds).

    Example:
        >>> from sbilab.estimators import classifier_training_data
        >>> train = classifier_training_data(torch.randn(20, 3), torch.randn(20, 3) + 1)
        >>> pair = ClassifierPair(Classifier.from_events(train, hidden=(8,), seed=0), Classifier.from_events(train, hidden=(8,), seed=1))
        >>> pair(train.x).shape
        torch.Size([40, 2])
    """

    def __init__(self, first: Classifier, second: Classifier) -> None:
        super().__init__()
        if not (isinstance(first, Classifier) and isinstance(second, Classifier)):
            raise ConfigError("ClassifierPair: first and second must both be sbilab Classifiers.")
        if first.spec()["x_features"] != second.spec()["x_features"] or first.is_set != second.is_set:
            raise ShapeMismatchError("ClassifierPair: the two classifiers must take the same inputs (x_features, sets or vectors).")
        self.first, self.second = first, second

    def forward(self, x: Tensor, theta: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Logits of both classifiers: ``x (N, D)`` -> ``(N, 2)``."""
        return torch.stack([self.first(x, theta, mask), self.second(x, theta, mask)], dim=-1)

    def logits(self, x: Any, theta: Any = None, *, mask: Any = None) -> tuple[Tensor, Tensor]:
        """Validated logits of the two classifiers, each ``(N,)``."""
        return self.first.logit(x, theta, mask=mask), self.second.logit(x, theta, mask=mask)

    def spec(self) -> dict[str, Any]:
        return {"first": self.first.spec(), "second": self.second.spec()}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "ClassifierPair":
        return cls(Classifier.from_spec(spec["first"]), Classifier.from_spec(spec["second"]))
