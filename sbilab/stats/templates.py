r"""Histogram templates and binning: equal-population bin edges, histograms, morphed templates.

:func:`quantile_edges` and :func:`histogram` bin any observable (binned searches, SALLINO);
:class:`MorphedHistogram` gives binned likelihoods of any observable for quadratic (EFT) models.

For a cross section quadratic in the couplings, :math:`d\sigma(x|\theta) = \sum_c m_c(\theta) f_c(x)`,
the expected count in bin b of any observable :math:`h(x)` is

.. math::
    \nu_b(\theta) = L \sum_c m_c(\theta)\,\sigma_{c,b}, \qquad
    \sigma_{c,b} = \int_{h(x)\in b} f_c(x)\,dx \approx \frac{\sigma_\mathrm{ref}}{N}\sum_{i:\,h(x_i)\in b} \frac{f_c(x_i)}{d\sigma(x_i|\theta_\mathrm{ref})},

estimated once from N events simulated at the reference point, each carrying its component
weights (morphing weights; arXiv:1805.00020). The extended binned Poisson likelihood
:math:`\prod_b \mathrm{Pois}(n_b|\nu_b(\theta))` equals, up to a constant, the extended
unbinned likelihood of "events" = bins with weights :math:`n_b`, ratio
:math:`\nu_b(\theta)\nu_\mathrm{ref}/(\nu_b(\theta_\mathrm{ref})\nu(\theta))` and yield
:math:`\nu(\theta)` — so :class:`~sbilab.stats.UnbinnedLikelihood` fits histograms too
(:meth:`MorphedHistogram.likelihood`).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from ..events import Events
from ..exceptions import ShapeMismatchError
from ..simulators.space import ParameterSpace
from ..simulators.weighted import MorphingBasis

__all__ = ["MorphedHistogram", "quantile_edges", "histogram"]


def quantile_edges(values: Tensor, bins: int) -> Tensor:
    """Bin edges ``(bins + 1,)`` at equal quantiles of ``values (N,)``, outer edges at ±inf."""
    q = torch.quantile(values.to(torch.float64), torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
    inf = torch.tensor([torch.inf], dtype=torch.float64)
    return torch.cat([-inf, torch.unique(q), inf])


def histogram(values: Tensor, edges: Tensor, weights: Tensor | None = None) -> Tensor:
    """Counts ``(B,)`` float64 of ``values (N,)`` in the bins ``edges (B + 1,)``; the outermost bins are open.

    Example:
        >>> histogram(torch.tensor([-5.0, 0.5, 1.5, 9.0]), torch.tensor([0.0, 1.0, 2.0])).tolist()
        [2.0, 2.0]
    """
    index = torch.bucketize(values.to(torch.float64).contiguous(), edges.to(torch.float64)[1:-1].contiguous(), right=True)
    w = torch.ones(values.shape[0], dtype=torch.float64) if weights is None else weights.to(torch.float64)
    return torch.zeros(len(edges) - 1, dtype=torch.float64).index_add_(0, index, w)


class MorphedHistogram(nn.Module):
    r"""Expected histograms :math:`\nu_b(\theta)` of an observable, morphed from component-weighted events.

    Args:
        observable: Observable values of the template events, ``(N,)``.
        component_weights: Per-event component weights :math:`w_{ic}` whose mean over events in a bin
            gives :math:`\sigma_{c,b}` (pb), ``(N, C)``.
        edges: Bin edges, ``(B + 1,)``.
        basis: The morphing basis (monomials :math:`m_c(\theta)`).
        space: Parameter space (its reference is the ratio's denominator).
        luminosity: :math:`L` in pb⁻¹.

    Example:
        >>> basis = MorphingBasis(1, max_power=2)
        >>> space = ParameterSpace(("g",), low=(-1.0,), high=(1.0,))
        >>> h = torch.tensor([0.1, 0.6, 0.7])
        >>> w = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0]], dtype=torch.float64) * 3
        >>> hist = MorphedHistogram(h, w, torch.tensor([-torch.inf, 0.5, torch.inf]), basis, space, luminosity=10.0)
        >>> hist.expected(torch.tensor([0.5], dtype=torch.float64)).tolist()  # bin 2: 10 * (2 + 0.5 + 0.25)
        [10.0, 27.5]
    """

    def __init__(self, observable: Tensor, component_weights: Tensor, edges: Tensor, basis: MorphingBasis,
                 space: ParameterSpace, *, luminosity: float) -> None:
        super().__init__()
        h = torch.as_tensor(observable).reshape(-1).to(torch.float64)
        w = torch.as_tensor(component_weights).to(torch.float64)
        if w.shape != (h.shape[0], basis.n_components):
            raise ShapeMismatchError(f"component_weights has shape {tuple(w.shape)}; expected ({h.shape[0]}, {basis.n_components}).")
        self.basis, self.space, self.luminosity = basis, space, float(luminosity)
        self.register_buffer("edges", torch.as_tensor(edges, dtype=torch.float64))
        index = self.bin_index(h)
        sums = torch.zeros(len(self.edges) - 1, basis.n_components, dtype=torch.float64).index_add_(0, index, w)
        self.register_buffer("sigma", sums / h.shape[0])  # (B, C) pb
        ref = self.expected(space.reference)
        if bool((ref <= 0).any()):
            raise ShapeMismatchError(f"some bins are empty at the reference point ({ref.tolist()}); use fewer bins or more template events.")
        self.register_buffer("log_ref", torch.log(ref / ref.sum()))

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    def bin_index(self, values: Tensor) -> Tensor:
        """Bin of each value, ``(N,)`` long, for ``values (N,)``."""
        return (torch.bucketize(values.to(torch.float64).contiguous(), self.edges[1:-1], right=True)).clamp(0, self.n_bins - 1)

    def counts(self, values: Tensor, weights: Tensor | None = None) -> Tensor:
        """Histogram ``(B,)`` of ``values (N,)`` (optionally weighted)."""
        return histogram(values, self.edges, weights)

    def expected(self, theta: Tensor) -> Tensor:
        r""":math:`\nu_b(\theta)`, ``(B,)`` for ``theta (P,)``; differentiable."""
        m = self.basis.components(theta.to(torch.float64).reshape(1, -1))[0]
        return self.luminosity * (self.sigma @ m)

    def yield_model(self, theta: Tensor) -> Tensor:
        r""":math:`\nu(\theta) = \sum_b \nu_b(\theta)`, a scalar for ``theta (P,)``."""
        return self.expected(theta).sum()

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        r"""Log-ratio of bin probabilities :math:`\log p_b(\theta) - \log p_b(\theta_\mathrm{ref})` for bin indices ``x (N, 1)``, ``theta (N, P)``."""
        m = self.basis.components(theta)  # (N, C)
        b = x[:, 0].round().long()
        nu_b = (self.sigma[b] * m).sum(1)
        nu = m @ self.sigma.sum(0)
        return torch.log(nu_b / nu) - self.log_ref[b]

    def likelihood(self, counts: Tensor, **options: Mapping) -> "object":
        """The extended binned Poisson likelihood of ``counts (B,)`` as an :class:`~sbilab.stats.UnbinnedLikelihood`."""
        from .unbinned import UnbinnedLikelihood

        x = torch.arange(self.n_bins, dtype=torch.float64).unsqueeze(1)
        keep = counts > 0
        observed = Events.observed(x[keep], weights=counts[keep].to(torch.float64))
        return UnbinnedLikelihood(self, observed, self.space, yield_model=self.yield_model, **options)
