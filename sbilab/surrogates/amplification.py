r"""How many original events a surrogate is worth: the amplification factor (GANplification, arXiv:2008.06545).

A surrogate trained on :math:`N` events can be sampled without limit, but its draws inherit
the training sample's fluctuations and add the network's own bias. On a toy whose truth is
known, compare the mean squared error of an estimate from :math:`M \gg N` surrogate draws with
that of the same estimate from :math:`n` original events. For an unbiased estimate from
:math:`n` original events,

.. math:: \mathrm{MSE}_\mathrm{orig}(n) = V/n,\qquad
    V = \sum_b p_b(1 - p_b)\ \text{(histogram fractions)},\quad V = \mathrm{Var}[x]\ \text{(mean)},

in closed form from the truth. From ``R`` surrogates (each trained on its own :math:`N` events)
with estimates :math:`\hat s_r`,

.. math:: \mathrm{MSE}_\mathrm{sur} = \frac1R\sum_r\Bigl(\lVert\hat s_r - s\rVert^2 - \hat V_r/M\Bigr),

the last term removing the noise of the finite surrogate sample. The surrogate is worth
:math:`N_\mathrm{eq} = V/\mathrm{MSE}_\mathrm{sur}` original events: the **amplification factor**
is :math:`N_\mathrm{eq}/N` (above 1: the surrogate's inductive bias adds information, as the paper
finds for smooth densities at small :math:`N`; below 1: it loses some). When
:math:`\mathrm{MSE}_\mathrm{sur}` is not resolved (below twice its error), the factor reported is the
lower bound :math:`V/(N(\max(\mathrm{MSE}_\mathrm{sur},0) + 2\sigma))` and ``resolved`` is ``False``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..exceptions import ConfigError, ShapeMismatchError

__all__ = ["AmplificationResult", "histogram_amplification", "mean_amplification"]


@dataclass(frozen=True)
class AmplificationResult:
    """The worth of a surrogate in original events for one statistic (see the module docs).

    Attributes:
        statistic: ``"histogram"`` or ``"mean"``.
        n_train: Events each surrogate was trained on, :math:`N`.
        n_surrogate: Draws per surrogate, :math:`M`.
        replicas: Surrogates (independent trainings), :math:`R`.
        variance: :math:`V` (MSE of one original event).
        mse_surrogate: Debiased MSE of the surrogate estimate.
        mse_error: Its standard error (replica spread and finite-:math:`M` noise).
        n_equivalent: :math:`N_\\mathrm{eq} = V/\\mathrm{MSE}_\\mathrm{sur}` (a lower bound if not resolved).
        factor: :math:`N_\\mathrm{eq}/N`.
        factor_error: Its standard error (NaN if not resolved).
        resolved: Whether the MSE exceeds twice its error.
    """

    statistic: str
    n_train: int
    n_surrogate: int
    replicas: int
    variance: float
    mse_surrogate: float
    mse_error: float
    n_equivalent: float
    factor: float
    factor_error: float
    resolved: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _samples(samples: Sequence[Any]) -> list[Tensor]:
    if len(samples) == 0:
        raise ConfigError("amplification: give at least one surrogate sample (one per trained surrogate).")
    out = []
    for i, s in enumerate(samples):
        t = torch.as_tensor(s, dtype=torch.float64)
        t = t[:, 0] if t.dim() == 2 and t.shape[1] == 1 else t
        if t.dim() != 1 or t.numel() < 2:
            raise ShapeMismatchError(f"amplification: sample {i} has shape {tuple(t.shape)}; give (M,) or (M, 1) draws of one observable.")
        out.append(t)
    return out


def _result(statistic: str, n_train: int, variance: float, errors2: list[float], noise: list[float], m: int, dof: int) -> AmplificationResult:
    if not n_train >= 1:
        raise ConfigError(f"amplification: n_train must be a positive number of events, got {n_train}.")
    per = torch.tensor([e - v / m for e, v in zip(errors2, noise)], dtype=torch.float64)
    r = per.numel()
    mse = float(per.mean())
    spread = float(per.std() / math.sqrt(r)) if r > 1 else 0.0
    # the finite-M noise left after debiasing: a chi-square-like spread of V/M with `dof` terms, averaged over r replicas
    floor = float(torch.tensor(noise).mean()) / m * math.sqrt(2.0 / (dof * r))
    err = math.hypot(spread, floor)
    resolved = mse > 2 * err
    if resolved:
        n_eq = variance / mse
        factor_error = n_eq / n_train * err / mse
    else:
        n_eq = variance / (max(mse, 0.0) + 2 * err)
        factor_error = math.nan
    return AmplificationResult(statistic, int(n_train), int(m), r, float(variance), mse, err, n_eq, n_eq / n_train, factor_error, resolved)


def histogram_amplification(samples: Sequence[Any], n_train: int, *, edges: Any, probabilities: Any) -> AmplificationResult:
    r"""Amplification for the bin fractions of a histogram with known true bin probabilities.

    Args:
        samples: One array of :math:`M` draws ``(M,)`` per trained surrogate (all the same :math:`M`).
        n_train: :math:`N`, the events each surrogate was trained on.
        edges: Bin edges ``(B + 1,)``; draws outside count in no bin (as original events would).
        probabilities: True probabilities of the bins ``(B,)`` (e.g. quadrature of the toy's density).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> draws = [torch.rand(400_000, generator=g) for _ in range(3)]   # a perfect "surrogate" of U(0, 1)
        >>> res = histogram_amplification(draws, 1000, edges=torch.linspace(0, 1, 11), probabilities=torch.full((10,), 0.1))
        >>> res.resolved                                               # its error is pure noise: only a lower bound
        False
    """
    xs = _samples(samples)
    e = torch.as_tensor(edges, dtype=torch.float64).reshape(-1)
    p = torch.as_tensor(probabilities, dtype=torch.float64).reshape(-1)
    if p.numel() != e.numel() - 1 or not bool((e[1:] > e[:-1]).all()):
        raise ShapeMismatchError(f"histogram_amplification: {e.numel()} increasing edges need {e.numel() - 1} probabilities, got {p.numel()}.")
    m = xs[0].numel()
    if any(x.numel() != m for x in xs):
        raise ShapeMismatchError("histogram_amplification: every surrogate sample needs the same number of draws.")
    errors2, noise = [], []
    for x in xs:
        f = _histogram(x, e) / m
        errors2.append(float(((f - p) ** 2).sum()))
        noise.append(float((f * (1 - f)).sum()))
    return _result("histogram", n_train, float((p * (1 - p)).sum()), errors2, noise, m, p.numel())


def _histogram(x: Tensor, edges: Tensor) -> Tensor:
    idx = torch.bucketize(x, edges, right=True) - 1
    inside = (idx >= 0) & (idx < edges.numel() - 1)
    return torch.bincount(idx[inside], minlength=edges.numel() - 1).to(torch.float64)


def mean_amplification(samples: Sequence[Any], n_train: int, *, mean: float, variance: float) -> AmplificationResult:
    r"""Amplification for the mean of an observable with known true mean and variance.

    Args:
        samples: One array of :math:`M` draws per trained surrogate.
        n_train: :math:`N`.
        mean, variance: The true :math:`E[x]` and :math:`\mathrm{Var}[x]`.
    """
    xs = _samples(samples)
    m = xs[0].numel()
    if any(x.numel() != m for x in xs):
        raise ShapeMismatchError("mean_amplification: every surrogate sample needs the same number of draws.")
    if not variance > 0:
        raise ConfigError(f"mean_amplification: the true variance must be positive, got {variance}.")
    errors2 = [float((x.mean() - mean) ** 2) for x in xs]
    noise = [float(x.var()) for x in xs]
    return _result("mean", n_train, float(variance), errors2, noise, m, 1)
