r"""Distances between an unfolded distribution and the truth: Δ, W1, χ²/ndf, classifier AUC.

* **Triangular discriminator** (Topsøe's symmetric :math:`\chi^2`, used for unfolding in
  arXiv:2006.06685 and 2212.08674), quoted :math:`\times 10^3`:

  .. math:: \Delta(p, q) = \frac12 \int \frac{(p(x) - q(x))^2}{p(x) + q(x)}\,dx
            \quad\text{or, binned,}\quad \frac12\sum_i \frac{(p_i - q_i)^2}{p_i + q_i},

  with :math:`p_i, q_i` the probability of bin :math:`i` (0 for identical, 1 for disjoint).
* **Wasserstein-1** in one dimension, :math:`W_1 = \int |F_p(x) - F_q(x)|\,dx`, exact for
  weighted samples (the step CDFs are integrated piece by piece).
* :math:`\chi^2/\mathrm{ndf}` of a histogram against a reference with the unfolding covariance.
* The **classifier two-sample AUC** of weighted unfolded events against truth events: a
  fresh classifier trained by :func:`sbilab.calibration.closure_test` (0.5: indistinguishable).

Example:
    >>> from scipy.stats import norm
    >>> round(1e3 * triangular_discriminator(norm(0, 1).pdf, norm(0.2, 0.8).pdf), 6)
    33.444576
    >>> round(wasserstein_1d_cdf(norm(0, 1).cdf, norm(0.1, 1).cdf), 12)
    0.1
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from scipy import integrate
from scipy.stats import chi2 as chi2_distribution
from torch import Tensor

from ..calibration import ClosureResult, closure_test
from ..exceptions import InvalidEventsError, ShapeMismatchError
from .binning import bin_index, bin_sums

__all__ = [
    "triangular_discriminator",
    "triangular_discriminator_binned",
    "wasserstein_1d",
    "wasserstein_1d_cdf",
    "Chi2Result",
    "chi2_ndf",
    "classifier_auc",
    "weighted_moments",
    "distances_to_truth",
]


def _quad(f: Callable[[float], float], lower: float, upper: float, points: list[float] | None = None) -> float:
    """Adaptive quadrature split at ``points`` (the densities' centres), to near machine precision."""
    cuts = sorted({lower, upper, *[p for p in (points or []) if lower < p < upper]})
    total = 0.0
    for a, b in zip(cuts[:-1], cuts[1:]):
        total += integrate.quad(f, a, b, epsabs=1e-15, epsrel=1e-12, limit=500)[0]
    return total


def triangular_discriminator(p: Callable[[Any], Any], q: Callable[[Any], Any], *, lower: float = -math.inf,
                             upper: float = math.inf, points: list[float] | None = None) -> float:
    r"""Continuous :math:`\Delta(p, q) = \frac12\int (p-q)^2/(p+q)\,dx` by adaptive quadrature.

    Args:
        p, q: Normalised densities, callables of a float (e.g. ``scipy.stats.norm(0, 1).pdf``).
        lower, upper: Integration range (the support).
        points: Abscissae where the integrand has structure (peaks), to split the integral.

    Returns:
        :math:`\Delta` (multiply by :math:`10^3` for the usual quotation).
    """

    def f(x: float) -> float:
        a, b = float(p(x)), float(q(x))
        return 0.0 if a + b <= 0 else 0.5 * (a - b) ** 2 / (a + b)

    return _quad(f, lower, upper, [0.0] if points is None else points)


def triangular_discriminator_binned(p: Tensor, q: Tensor, *, normalize: bool = True) -> Tensor:
    r"""Binned :math:`\Delta = \frac12\sum_i (p_i-q_i)^2/(p_i+q_i)` over the last dimension, ``(...)``.

    Args:
        p, q: Histograms ``(..., B)`` (counts or probabilities; leading dimensions broadcast).
        normalize: Divide each histogram by its sum first. With ``False`` the inputs are taken
            as probabilities per bin as given (e.g. exact bin masses of densities whose tails
            fall outside the range).

    Raises:
        ShapeMismatchError: different numbers of bins.
        InvalidEventsError: negative or non-finite entries, or a histogram with zero sum.
    """
    a, b = torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64)
    if a.shape[-1] != b.shape[-1]:
        raise ShapeMismatchError(f"p has {a.shape[-1]} bins and q {b.shape[-1]}; compare histograms on the same bins.")
    for name, h in (("p", a), ("q", b)):
        if not bool(torch.isfinite(h).all()) or bool((h < 0).any()):
            raise InvalidEventsError(f"histogram {name} holds negative or non-finite entries.")
    if normalize:
        sa, sb = a.sum(-1, keepdim=True), b.sum(-1, keepdim=True)
        if bool((sa <= 0).any()) or bool((sb <= 0).any()):
            raise InvalidEventsError("a histogram has zero total; it cannot be normalised.")
        a, b = a / sa, b / sb
    s = a + b
    return 0.5 * torch.where(s > 0, (a - b) ** 2 / s.clamp_min(1e-300), torch.zeros_like(s)).sum(-1)


def _weights(w: Tensor | None, n: int, name: str) -> Tensor:
    if w is None:
        return torch.ones(n, dtype=torch.float64)
    t = torch.as_tensor(w, dtype=torch.float64)
    if t.shape[-1] != n:
        raise ShapeMismatchError(f"{name} has {t.shape[-1]} entries per column for {n} values.")
    if not bool(torch.isfinite(t).all()):
        raise InvalidEventsError(f"{name} holds NaN/inf values.")
    if bool((t.sum(-1) <= 0).any()):
        raise InvalidEventsError(f"{name} has a non-positive sum; W1 needs a positive total weight per column.")
    return t


def wasserstein_1d(a: Tensor, b: Tensor, *, weights_a: Tensor | None = None, weights_b: Tensor | None = None) -> Tensor:
    r"""Exact :math:`W_1 = \int |F_a - F_b|\,dx` of two weighted 1-D samples.

    Args:
        a: Sample ``(N,)``; b: sample ``(M,)``.
        weights_a: Weights ``(..., N)`` (leading dimensions: many weight columns, e.g.
            replicas, evaluated at once); default ones. Negative entries are allowed, a
            non-positive column sum is not.
        weights_b: Weights ``(..., M)``.

    Returns:
        :math:`W_1`, shape ``(...)`` (a 0-d tensor for single columns).

    Raises:
        InvalidEventsError: NaN/inf values or weights, a non-positive weight sum.
    """
    x, y = torch.as_tensor(a, dtype=torch.float64).reshape(-1), torch.as_tensor(b, dtype=torch.float64).reshape(-1)
    if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(y).all()):
        raise InvalidEventsError("wasserstein_1d: the samples hold NaN/inf values.")
    wa, wb = _weights(weights_a, x.numel(), "weights_a"), _weights(weights_b, y.numel(), "weights_b")
    values, order = torch.sort(torch.cat([x, y]))
    ua = torch.cat([wa / wa.sum(-1, keepdim=True), torch.zeros(*wa.shape[:-1], y.numel(), dtype=torch.float64)], -1)
    ub = torch.cat([torch.zeros(*wb.shape[:-1], x.numel(), dtype=torch.float64), wb / wb.sum(-1, keepdim=True)], -1)
    diff = (ua[..., order] - ub[..., order]).cumsum(-1)[..., :-1]
    return (diff.abs() * values.diff()).sum(-1)


def weighted_moments(values: Tensor, weights: Tensor | None = None) -> Tensor:
    r"""Weighted mean and standard deviation :math:`(\bar x, \sqrt{\overline{(x-\bar x)^2}})` of ``values (N,)``.

    Args:
        values: ``(N,)``.
        weights: ``(..., N)`` (many weight columns at once); default ones.

    Returns:
        ``(..., 2)``: mean and standard deviation per weight column.

    Raises:
        InvalidEventsError: NaN/inf or a non-positive weight sum.
    """
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if not bool(torch.isfinite(v).all()):
        raise InvalidEventsError("weighted_moments: the values hold NaN/inf.")
    w = _weights(weights, v.numel(), "weights")
    total = w.sum(-1, keepdim=True)
    mean = (w * v).sum(-1, keepdim=True) / total
    var = (w * (v - mean) ** 2).sum(-1, keepdim=True) / total
    return torch.cat([mean, var.clamp_min(0).sqrt()], -1)


def distances_to_truth(events: Tensor, weights: Tensor, truth: Tensor, edges: Sequence[Tensor]) -> dict[str, list[float]]:
    r"""Per observable: binned :math:`\Delta\times 10^3` and :math:`W_1` of weighted unfolded events against truth events.

    Every observable is compared inside its bin range: :math:`\Delta` on the bins ``edges[d]``,
    :math:`W_1` between the events (of either sample) inside ``[edges[d][0], edges[d][-1]]``, so
    that methods whose results cover different ranges (binned IBU, reweighted events, generated
    events) are compared on the same footing.

    Args:
        events: Unfolded generator-level events ``(N, D)``.
        weights: Their weights ``(N,)`` (may be negative; positive total inside each range).
        truth: Truth events ``(T, D)``.
        edges: One edge tensor ``(B_d + 1,)`` per observable.

    Returns:
        ``{"delta_x1e3": [D values], "w1": [D values]}``.

    Raises:
        ShapeMismatchError: events, weights, truth and edges disagree in size.
    """
    x = torch.as_tensor(events, dtype=torch.float64)
    x = x[:, None] if x.dim() == 1 else x
    t = torch.as_tensor(truth, dtype=torch.float64)
    t = t[:, None] if t.dim() == 1 else t
    w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
    if w.numel() != x.shape[0] or t.shape[1] != x.shape[1] or len(edges) != x.shape[1]:
        raise ShapeMismatchError(f"distances_to_truth: events {tuple(x.shape)}, weights {tuple(w.shape)}, truth {tuple(t.shape)} "
                                 f"and {len(edges)} edge sets must agree (N, D), (N,), (T, D), D.")
    delta, w1 = [], []
    for d, e in enumerate(edges):
        e = torch.as_tensor(e, dtype=torch.float64)
        ia, ib = bin_index(x[:, d], e), bin_index(t[:, d], e)
        h_a = bin_sums(ia, w, e.numel() - 1).clamp_min(0)
        h_b = bin_sums(ib, torch.ones(t.shape[0], dtype=torch.float64), e.numel() - 1)
        delta.append(1e3 * float(triangular_discriminator_binned(h_a, h_b)))
        keep = (ia >= 0) & (w != 0)
        w1.append(float(wasserstein_1d(x[keep, d], t[ib >= 0, d], weights_a=w[keep])))
    return {"delta_x1e3": delta, "w1": w1}


def wasserstein_1d_cdf(cdf_p: Callable[[Any], Any], cdf_q: Callable[[Any], Any], *, lower: float = -math.inf,
                       upper: float = math.inf, points: list[float] | None = None) -> float:
    r"""Continuous :math:`W_1 = \int |F_p - F_q|\,dx` of two CDFs by adaptive quadrature."""
    return _quad(lambda x: abs(float(cdf_p(x)) - float(cdf_q(x))), lower, upper, [0.0] if points is None else points)


@dataclass(frozen=True)
class Chi2Result:
    r""":math:`\chi^2` of a histogram against a reference.

    Attributes:
        chi2: :math:`(u - t)^T V^+ (u - t)` with :math:`V^+` the pseudo-inverse.
        ndf: Rank of :math:`V` (the number of bins for a regular covariance).
        p_value: :math:`P(\chi^2_{\mathrm{ndf}} \ge \chi^2)`.
    """

    chi2: float
    ndf: int
    p_value: float

    @property
    def per_ndf(self) -> float:
        r""":math:`\chi^2/\mathrm{ndf}`."""
        return self.chi2 / self.ndf


def chi2_ndf(values: Tensor, reference: Tensor, covariance: Tensor, *, reference_covariance: Tensor | None = None,
             rcond: float = 1e-10) -> Chi2Result:
    r""":math:`\chi^2/\mathrm{ndf}` of unfolded ``values`` against ``reference`` with the unfolding covariance.

    Args:
        values: Unfolded histogram ``(B,)``.
        reference: Truth (or prediction) ``(B,)``.
        covariance: Covariance of ``values`` ``(B, B)`` (e.g. :attr:`IBUResult.covariance` of one iteration).
        reference_covariance: Covariance of ``reference`` (e.g. its MC statistics), added.
        rcond: Eigenvalues below ``rcond`` times the largest are dropped (a normalised
            histogram has a singular covariance); ``ndf`` is the number kept.

    Raises:
        ShapeMismatchError: shapes disagree.
        InvalidEventsError: NaN/inf, or a covariance that is not symmetric positive semi-definite.
    """
    u, t = torch.as_tensor(values, dtype=torch.float64).reshape(-1), torch.as_tensor(reference, dtype=torch.float64).reshape(-1)
    v = torch.as_tensor(covariance, dtype=torch.float64)
    if reference_covariance is not None:
        v = v + torch.as_tensor(reference_covariance, dtype=torch.float64)
    if u.shape != t.shape or v.shape != (u.numel(), u.numel()):
        raise ShapeMismatchError(f"values {tuple(u.shape)}, reference {tuple(t.shape)} and covariance {tuple(v.shape)} must be (B,), (B,), (B, B).")
    if not all(bool(torch.isfinite(z).all()) for z in (u, t, v)):
        raise InvalidEventsError("chi2_ndf: NaN/inf in values, reference or covariance.")
    if not torch.allclose(v, v.T, rtol=1e-8, atol=1e-12 * float(v.abs().max().clamp_min(1e-300))):
        raise InvalidEventsError("chi2_ndf: the covariance is not symmetric.")
    eigval, eigvec = torch.linalg.eigh(v)
    top = float(eigval.max())
    if top <= 0 or float(eigval.min()) < -1e-8 * top:
        raise InvalidEventsError("chi2_ndf: the covariance is not positive semi-definite.")
    keep = eigval > rcond * top
    proj = eigvec[:, keep].T @ (u - t)
    chi2 = float((proj**2 / eigval[keep]).sum())
    ndf = int(keep.sum())
    return Chi2Result(chi2, ndf, float(chi2_distribution.sf(chi2, ndf)))


def classifier_auc(unfolded: Tensor, truth: Tensor, *, weights: Tensor | None = None,
                   weights_truth: Tensor | None = None, seed: int = 0, **options: Any) -> ClosureResult:
    r"""Weighted classifier two-sample AUC of unfolded events against truth events.

    A fresh classifier is trained (by :func:`sbilab.calibration.closure_test`, i.e. by
    :func:`sbilab.training.fit`) to separate the unfolded events, weighted by ``weights``, from
    the truth events; its held-out weighted AUC is 0.5 when the two are indistinguishable.

    Args:
        unfolded: Generator-level events ``(N, D)`` (or ``(N,)``).
        truth: Truth events ``(M, D)`` (or ``(M,)``).
        weights: Unfolded weights ``(N,)``, positive (default ones).
        weights_truth: Weights of the truth events ``(M,)``.
        seed: Seed of the split, initialisation and bootstrap.
        options: Passed to :func:`~sbilab.calibration.closure_test` (``epochs``, ``hidden``, ...); the
            normalisation is not tested (``normalised=False``) unless asked for.

    Returns:
        :class:`~sbilab.calibration.ClosureResult` (``auc``, ``auc_error``, ``passed``).

    Raises:
        InvalidEventsError: non-positive or non-finite weights.
    """
    x = torch.as_tensor(unfolded, dtype=torch.float32)
    w = torch.ones(x.shape[0], dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
        raise InvalidEventsError("classifier_auc: weights must be positive and finite (drop zero-weight events first).")
    options.setdefault("normalised", False)  # unfolded weights carry the data's total, not a density ratio's
    return closure_test(x, truth, torch.log(w), weights_target=weights_truth, seed=seed, **options)
