r"""Fisher information: exact, from a learned score (SALLY), from histograms and from rates.

The Fisher information bounds the covariance of any unbiased estimator (Cramér–Rao,
:math:`\mathrm{cov}\,\hat\theta \succeq I^{-1}`); comparing it across observables says how much
of the information in the full events each summary keeps (Brehmer, Cranmer, Louppe, Pavez,
arXiv:1805.00020, sec. 2).

* per event, from scores: :math:`I = \langle t\,t^T \rangle` with :math:`t = \nabla_\theta\log p(x|\theta)`;
* from a histogram with expected counts :math:`\nu_b(\theta)`:
  :math:`I = \sum_b \partial\nu_b\,\partial\nu_b^T / \nu_b`;
* from the total rate alone: :math:`I = \nu'\nu'^T/\nu`.

For histograms of events drawn at θ, :math:`\partial_\theta \nu_b = \sum_{i\in b} w_i\, t_i`
holds in expectation for the exact score *and* for the joint score :math:`t(x,z|\theta)` of
the simulator's latent path, so :func:`histogram_fisher` needs no finite differences when
scores are available; :func:`counts_fisher` takes any ``θ -> ν(θ)`` and uses central differences.
Functions on events return the information *per event*; :func:`counts_fisher` and
:func:`rate_fisher` return the information of the expected counts they are given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..exceptions import ShapeMismatchError
from .results import ResultBase

__all__ = [
    "fisher_from_scores",
    "exact_fisher",
    "sally_fisher",
    "histogram_fisher",
    "counts_fisher",
    "rate_fisher",
    "cramer_rao",
    "FisherTable",
    "fisher_table",
]


def _weights(weights: Any, n: int, like: Tensor) -> Tensor:
    if weights is None:
        return torch.ones(n, dtype=torch.float64, device=like.device)
    w = torch.as_tensor(weights, dtype=torch.float64, device=like.device).reshape(-1)
    if w.numel() != n:
        raise ShapeMismatchError(f"weights has {w.numel()} entries but there are {n} events.")
    return w


def fisher_from_scores(scores: Tensor, weights: Tensor | None = None) -> Tensor:
    r"""Per-event Fisher information :math:`\sum_i w_i t_i t_i^T / \sum_i w_i`, ``(P, P)`` float64.

    Args:
        scores: ``(N, P)`` scores of events drawn at the point of interest.
        weights: ``(N,)`` event weights.

    Example:
        >>> fisher_from_scores(torch.tensor([[1.0], [-1.0], [2.0], [-2.0]])).item()
        2.5
    """
    t = torch.as_tensor(scores).to(torch.float64)
    if t.dim() != 2:
        raise ShapeMismatchError(f"scores must be (N, P), got shape {tuple(t.shape)}.")
    w = _weights(weights, t.shape[0], t)
    return torch.einsum("n,ni,nj->ij", w, t, t) / w.sum()


def exact_fisher(simulator: Any, theta: Tensor, *, n_events: int = 100_000, generator: torch.Generator | None = None) -> Tensor:
    r"""Per-event Fisher information of a toy with an exact score, by Monte Carlo of :math:`t\,t^T`.

    Args:
        simulator: A toy with ``score(x, theta) -> (N, P)`` (exact marginal score).
        theta: Point, ``(P,)``.
        n_events: Events drawn at ``theta``.

    Returns:
        ``(P, P)`` float64. (Toys with a quadrature ``fisher_information(theta)`` give it exactly.)
    """
    theta = torch.as_tensor(theta, dtype=torch.float64).reshape(-1)
    events = simulator.simulate(n_events, theta=theta, generator=generator)
    x = events.x.to(torch.float64)
    return fisher_from_scores(simulator.score(x, theta.expand(len(x), -1)))


def sally_fisher(score_estimator: Callable[..., Tensor], x: Tensor, *, weights: Tensor | None = None, mask: Tensor | None = None,
                 batch_size: int = 65536) -> Tensor:
    r"""Per-event Fisher information from a SALLY estimator: :math:`\langle \hat t(x) \hat t(x)^T\rangle`.

    Args:
        score_estimator: ``forward(x: (N, D)) -> t̂ (N, P)``, e.g. a trained ``ScoreEstimator``
            (for padded sets called as ``forward(x, mask=mask)``).
        x: Events drawn at the estimator's reference point, ``(N, D)`` or padded sets ``(N, M, F)``.
        weights: ``(N,)`` event weights.
        mask: ``(N, M)`` bool, which set entries are real.
    """
    def score(i: int) -> Tensor:
        rows = slice(i, i + batch_size)
        out = score_estimator(x[rows]) if mask is None else score_estimator(x[rows], mask=mask[rows])
        return out.to(torch.float64)

    with torch.no_grad():
        parts = [score(i) for i in range(0, len(x), batch_size)]
    return fisher_from_scores(torch.cat(parts), weights)


def _bin_index(values: Tensor, bins: Sequence[Any]) -> tuple[Tensor, int]:
    """Flat bin index of each row of ``values (N, K)`` for per-axis edges; -1 outside."""
    n, k = values.shape
    if len(bins) != k:
        raise ShapeMismatchError(f"bins gives edges for {len(bins)} axes but values have {k} columns.")
    flat = torch.zeros(n, dtype=torch.long)
    inside = torch.ones(n, dtype=torch.bool)
    n_total = 1
    for j, edges in enumerate(bins):
        e = torch.as_tensor(np.asarray(edges, dtype=float), dtype=torch.float64)
        if e.dim() != 1 or e.numel() < 2 or bool((e[1:] <= e[:-1]).any()):
            raise ShapeMismatchError(f"bins[{j}] must be increasing edges with at least 2 entries.")
        idx = torch.bucketize(values[:, j].contiguous(), e, right=True) - 1
        inside &= (idx >= 0) & (idx < e.numel() - 1)
        flat = flat * (e.numel() - 1) + idx.clamp(0, e.numel() - 2)
        n_total *= e.numel() - 1
    return torch.where(inside, flat, torch.full_like(flat, -1)), n_total


def histogram_fisher(values: Tensor, scores: Tensor, bins: Sequence[Any], *, weights: Tensor | None = None, min_count: float = 0.0) -> Tensor:
    r"""Per-event Fisher information kept by a histogram of one or two observables.

    .. math:: I = \frac{1}{\sum_i w_i}\sum_b \frac{(\sum_{i\in b} w_i t_i)(\sum_{i\in b} w_i t_i)^T}{\sum_{i\in b} w_i}

    Args:
        values: Observable(s) of events drawn at θ, ``(N,)`` or ``(N, K)`` (K = 1 or 2).
        scores: Exact or joint scores of the same events at θ, ``(N, P)``.
        bins: Edges per axis, e.g. ``[np.linspace(-5, 5, 51)]``; events outside are dropped
            (their information is lost, as in a real histogram).
        weights: ``(N,)`` event weights.
        min_count: Bins with summed weight at or below this are skipped.

    Example:
        >>> x = torch.tensor([[-1.0], [-0.5], [0.5], [1.0]])
        >>> histogram_fisher(x, x, [[-2.0, 0.0, 2.0]]).item()  # per bin mean score ±0.75
        0.5625
    """
    v = torch.as_tensor(values).to(torch.float64)
    v = v.reshape(-1, 1) if v.dim() == 1 else v
    t = torch.as_tensor(scores).to(torch.float64)
    if t.dim() != 2 or t.shape[0] != v.shape[0]:
        raise ShapeMismatchError(f"scores must be (N, P) with N = {v.shape[0]} rows, got {tuple(t.shape)}.")
    w = _weights(weights, v.shape[0], v)
    index, n_bins = _bin_index(v, bins)
    keep = index >= 0
    counts = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index[keep], w[keep])
    derivs = torch.zeros(n_bins, t.shape[1], dtype=torch.float64).index_add_(0, index[keep], w[keep, None] * t[keep])
    ok = counts > min_count
    info = torch.einsum("bi,bj->ij", derivs[ok] / counts[ok, None], derivs[ok])
    return info / w.sum()


def counts_fisher(expected_counts: Callable[[Tensor], Tensor], theta: Tensor, *, step: float | Sequence[float] = 1e-3) -> Tensor:
    r"""Fisher information of Poisson counts :math:`\sum_b \partial\nu_b\,\partial\nu_b^T/\nu_b` by central differences.

    Args:
        expected_counts: ``θ (P,) -> ν (B,)`` expected counts (e.g. histograms of weighted
            events reweighted to θ, or a morphing model's expected bin yields).
        theta: Point, ``(P,)``.
        step: Finite-difference step per parameter (absolute).

    Returns:
        ``(P, P)`` float64: the information of the counts themselves (scales with luminosity).

    Example:
        >>> round(counts_fisher(lambda th: 100 * torch.exp(th), torch.zeros(1)).item(), 4)  # nu'^2/nu = nu
        100.0
    """
    th = torch.as_tensor(theta, dtype=torch.float64).reshape(-1)
    steps = torch.as_tensor(step, dtype=torch.float64).reshape(-1).expand(th.numel())
    nu = torch.as_tensor(expected_counts(th), dtype=torch.float64).reshape(-1)
    derivs = []
    for k in range(th.numel()):
        e = torch.zeros_like(th)
        e[k] = steps[k]
        up = torch.as_tensor(expected_counts(th + e), dtype=torch.float64).reshape(-1)
        down = torch.as_tensor(expected_counts(th - e), dtype=torch.float64).reshape(-1)
        derivs.append((up - down) / (2 * steps[k]))
    d = torch.stack(derivs, dim=1)
    ok = nu > 0
    return torch.einsum("bi,bj->ij", d[ok] / nu[ok, None], d[ok])


def rate_fisher(expected_events: Callable[[Tensor], Tensor], theta: Tensor, *, step: float | Sequence[float] = 1e-3) -> Tensor:
    r"""Fisher information of the total rate alone, :math:`\nu'\nu'^T/\nu`, ``(P, P)``."""
    return counts_fisher(lambda th: torch.as_tensor(expected_events(th), dtype=torch.float64).reshape(1), theta, step=step)


def cramer_rao(fisher: Tensor, n_events: float = 1.0, *, names: Sequence[str] | None = None,
               constraints: Mapping[str, tuple[float, float]] | None = None, fixed: Sequence[str] = ()) -> Tensor:
    r"""Cramér–Rao standard deviations of profiled fits: :math:`\sqrt{\mathrm{diag}\,(n I + C)^{-1}}`, ``(P,)`` float64.

    Gaussian constraints :math:`\mathcal N(m_k, s_k)` on nuisance parameters add
    :math:`C = \mathrm{diag}(1/s_k^2)` (the information of the auxiliary measurement); parameters
    held ``fixed`` are removed from the matrix before inversion (the others are profiled over the
    remaining free ones) and get standard deviation 0.

    Args:
        fisher: Per-event Fisher information, ``(P, P)``.
        n_events: Number of events :math:`n`.
        names: Parameter names in the order of ``fisher`` (needed with ``constraints`` or ``fixed``).
        constraints: ``{name: (mean, sigma)}``.
        fixed: Names of the parameters held fixed.

    Raises:
        ShapeMismatchError: ``fisher`` is not square, ``names`` has the wrong length, or a
            constraint or fixed parameter is not among ``names``.

    Example:
        >>> f = torch.ones(2, 2, dtype=torch.float64)  # x ~ N(mu + eta, 1): only mu + eta is measured
        >>> sd = cramer_rao(f, 100, names=["mu", "eta"], constraints={"eta": (0.0, 0.2)})
        >>> round(sd[0].item() ** 2, 12)  # 1/n + s^2 = 0.01 + 0.04
        0.05
        >>> cramer_rao(f, 100, names=["mu", "eta"], fixed=["eta"]).tolist()  # 1/sqrt(n)
        [0.1, 0.0]
    """
    f = torch.as_tensor(fisher, dtype=torch.float64) * n_events
    if f.dim() != 2 or f.shape[0] != f.shape[1]:
        raise ShapeMismatchError(f"cramer_rao: fisher must be a square (P, P) matrix, got shape {tuple(f.shape)}.")
    constraints = dict(constraints or {})
    if not constraints and not fixed:
        return torch.sqrt(torch.diagonal(torch.linalg.inv(f)))
    if names is None or len(names) != f.shape[0]:
        raise ShapeMismatchError(f"cramer_rao: constraints and fixed need names, one per row of fisher ({f.shape[0]}); got {names!r}.")
    names = list(names)
    unknown = sorted((set(constraints) | set(fixed)) - set(names))
    if unknown:
        raise ShapeMismatchError(f"cramer_rao: {unknown} are not among the parameter names {names}.")
    f = f.clone()
    for name, (_, sigma) in constraints.items():
        i = names.index(name)
        f[i, i] += 1.0 / sigma**2
    free = [i for i, name in enumerate(names) if name not in set(fixed)]
    sigma = torch.zeros(len(names), dtype=torch.float64)
    sigma[free] = torch.linalg.inv(f[free][:, free]).diagonal().sqrt()
    return sigma


@dataclass(frozen=True)
class FisherTable(ResultBase):
    r"""How much Fisher information each observable keeps relative to the exact one.

    Attributes:
        parameters: Parameter names.
        observables: Row names (the first is the reference, usually ``"exact"``).
        diagonal: :math:`I_{jj}` per observable and parameter.
        kept: :math:`I_{jj}/I^\mathrm{exact}_{jj}` (marginal information kept per parameter).
        kept_det: :math:`(\det I/\det I^\mathrm{exact})^{1/P}` (joint information kept).
        sigma: Cramér–Rao errors :math:`\sqrt{(I^{-1})_{jj}}` (profiled), ``nan`` if singular.
    """

    parameters: tuple[str, ...]
    observables: tuple[str, ...]
    diagonal: tuple[tuple[float, ...], ...]
    kept: tuple[tuple[float, ...], ...]
    kept_det: tuple[float, ...]
    sigma: tuple[tuple[float, ...], ...]

    def __str__(self) -> str:
        head = "| observable | " + " | ".join(f"I({p}) kept" for p in self.parameters) + " | det kept | " + " | ".join(f"σ({p})" for p in self.parameters) + " |"
        rows = [head, "|" + "---|" * (2 + 2 * len(self.parameters))]
        for i, name in enumerate(self.observables):
            kept = " | ".join(f"{v:.3f}" for v in self.kept[i])
            sig = " | ".join(f"{v:.4g}" for v in self.sigma[i])
            rows.append(f"| {name} | {kept} | {self.kept_det[i]:.3f} | {sig} |")
        return "\n".join(rows)


def fisher_table(informations: Mapping[str, Tensor], *, parameters: Sequence[str], reference: str = "exact", n_events: float = 1.0) -> FisherTable:
    r"""Compare Fisher matrices (same normalisation) against ``informations[reference]``.

    Args:
        informations: ``{observable name: (P, P)}``; must contain ``reference``.
        parameters: Parameter names (length P).
        n_events: Events the matrices are scaled by for the Cramér–Rao column.

    Raises:
        ShapeMismatchError: missing reference or matrices of the wrong shape.
    """
    if reference not in informations:
        raise ShapeMismatchError(f"informations lacks the reference entry {reference!r}; it has {sorted(informations)}.")
    p = len(parameters)
    names = [reference] + [k for k in informations if k != reference]
    mats = {}
    for k in names:
        m = torch.as_tensor(informations[k], dtype=torch.float64)
        if m.shape != (p, p):
            raise ShapeMismatchError(f"informations[{k!r}] has shape {tuple(m.shape)}, expected ({p}, {p}).")
        mats[k] = m
    ref = mats[reference]
    det_ref = float(torch.linalg.det(ref))
    diagonal, kept, kept_det, sigma = [], [], [], []
    for k in names:
        m = mats[k]
        diagonal.append(tuple(torch.diagonal(m).tolist()))
        kept.append(tuple((torch.diagonal(m) / torch.diagonal(ref)).tolist()))
        det = float(torch.linalg.det(m))
        kept_det.append(float(np.sign(det) * abs(det / det_ref) ** (1 / p)))
        try:
            sigma.append(tuple(cramer_rao(m, n_events).tolist()) if det > 0 else (float("nan"),) * p)
        except RuntimeError:
            sigma.append((float("nan"),) * p)
    return FisherTable(tuple(parameters), tuple(names), tuple(diagonal), tuple(kept), tuple(kept_det), tuple(sigma))
