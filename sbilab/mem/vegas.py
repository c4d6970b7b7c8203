r"""A VEGAS-like adaptive grid, adapted for many events at once.

VEGAS (Lepage, J. Comput. Phys. 27 (1978) 192; arXiv:2009.05112) approximates the optimal
proposal by a product of one-dimensional piecewise-constant densities: each integration
variable :math:`v_d \in [0,1]` (the box of the process, rescaled) is cut into ``bins`` intervals
of equal probability :math:`1/n_b`, so :math:`q(v) = \prod_d 1/(n_b\,\Delta_{d,i(v_d)})`. After
each iteration the bin edges move so that every bin holds the same share of the damped,
smoothed :math:`\langle (g/q)^2 q^2\rangle` accumulated in it:

.. math::
    \bar d_i = \frac{d_{i-1} + 6 d_i + d_{i+1}}{8}, \qquad
    d_i \leftarrow \Big(\frac{1 - \bar d_i}{\ln(1/\bar d_i)}\Big)^{a} \quad(\bar d \text{ normalised}, a = 1.5).

Here one grid per event is adapted in a single batched loop (every event's integrand is
different), and the frozen grids become an α-independent :class:`VegasProposal` keyed by the
events' contents, so the likelihood can use them with common random numbers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..exceptions import ConfigError, IntegrandError
from .model import MatrixElement
from .noise import event_keys
from .proposals import Proposal

__all__ = ["VegasProposal", "adapt_vegas"]


class VegasProposal(Proposal):
    r"""Per-event adaptive grids on the process's box, as a proposal.

    Args:
        bounds: The box, ``(dim, 2)``.
        edges: Bin edges in [0, 1], ``(B, dim, bins + 1)``; row ``b`` belongs to the event
            with key ``keys[b]``.
        keys: :func:`~sbilab.mem.noise.event_keys` of the events the grids were adapted for,
            ``(B,)``; ``None`` for a single grid used for every event (then ``B = 1``).
        key_seed: Seed the keys were computed with.

    Raises:
        IntegrandError: :meth:`transform` is asked for an event without a grid.
    """

    def __init__(self, bounds: Tensor, edges: Tensor, keys: Tensor | None = None, *, key_seed: int = 0) -> None:
        self.bounds = torch.as_tensor(bounds, dtype=torch.float64)
        self.edges = edges.to(torch.float64)
        self.dim = self.noise_dim = int(self.bounds.shape[0])
        if self.edges.dim() != 3 or self.edges.shape[1] != self.dim:
            raise ConfigError(f"VegasProposal: edges must be (B, {self.dim}, bins + 1), got {tuple(self.edges.shape)}.")
        if keys is None and self.edges.shape[0] != 1:
            raise ConfigError("VegasProposal: several grids need the keys of the events they belong to.")
        self.keys = None if keys is None else keys.to(torch.int64)
        self.key_seed = int(key_seed)
        self._log_volume = float(torch.log(self.bounds[:, 1] - self.bounds[:, 0]).sum())
        if self.keys is not None:
            self._sorted, self._order = torch.sort(self.keys)

    @property
    def bins(self) -> int:
        return int(self.edges.shape[-1] - 1)

    def _grids(self, x: Tensor | None, rows: int) -> Tensor:
        if self.keys is None:
            return self.edges.expand(rows, -1, -1)
        if x is None:
            raise IntegrandError("VegasProposal holds per-event grids; pass the events x to transform/log_prob.")
        k = event_keys(x, self.key_seed)
        pos = torch.searchsorted(self._sorted, k).clamp(max=len(self._sorted) - 1)
        found = self._sorted[pos] == k
        if not bool(found.all()):
            i = int(torch.nonzero(~found)[0, 0])
            raise IntegrandError(
                f"VegasProposal has no grid for {int((~found).sum())} of {x.shape[0]} events (first: x={x[i].tolist()}); "
                "adapt the grids on the events you integrate (adapt_vegas(model, x, ...))."
            )
        return self.edges[self._order[pos]]

    def map(self, u: Tensor, grids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Grid map of ``u (N, S, dim)``: ``v`` in [0, 1], :math:`\\log|dv/du|` ``(N, S)``, bin indices ``(N, S, dim)``."""
        nb = self.bins
        pos = u * nb
        idx = pos.floor().long().clamp(0, nb - 1)
        g = grids.unsqueeze(1).expand(-1, u.shape[1], -1, -1)  # (N, S, dim, nb + 1)
        lo = torch.gather(g, 3, idx.unsqueeze(-1)).squeeze(-1)
        hi = torch.gather(g, 3, (idx + 1).unsqueeze(-1)).squeeze(-1)
        v = lo + (pos - idx) * (hi - lo)
        return v, torch.log(nb * (hi - lo)).sum(-1), idx

    def transform(self, u: Tensor, x: Tensor | None) -> tuple[Tensor, Tensor]:
        v, log_jac, _ = self.map(u, self._grids(x, u.shape[0]).to(u.dtype))
        lo, hi = self.bounds.to(u.device, u.dtype).unbind(-1)
        return lo + (hi - lo) * v, -self._log_volume - log_jac

    def log_prob(self, z: Tensor, x: Tensor | None) -> Tensor:
        lo, hi = self.bounds.to(z.device, z.dtype).unbind(-1)
        v = (z - lo) / (hi - lo)
        inside = ((v >= 0) & (v <= 1)).all(-1)
        grids = self._grids(x, z.shape[0]).to(z.dtype)  # (N, dim, nb + 1)
        n, s, d = v.shape
        flat = v.permute(0, 2, 1).reshape(n * d, s).clamp(0, 1).contiguous()
        e = grids.reshape(n * d, -1).contiguous()
        idx = (torch.searchsorted(e, flat, right=True) - 1).clamp(0, self.bins - 1)
        width = (torch.gather(e, 1, idx + 1) - torch.gather(e, 1, idx)).reshape(n, d, s)
        log_q = -self._log_volume - torch.log(self.bins * width).sum(1)
        return torch.where(inside, log_q, torch.full_like(log_q, -math.inf))


def _refine(edges: Tensor, d: Tensor, damping: float) -> Tensor:
    """New edges ``(B, dim, nb + 1)`` giving each bin an equal share of the damped importance ``d (B, dim, nb)``."""
    nb = d.shape[-1]
    sm = torch.empty_like(d)
    if nb > 1:
        sm[..., 1:-1] = (d[..., :-2] + 6 * d[..., 1:-1] + d[..., 2:]) / 8
        sm[..., 0] = (7 * d[..., 0] + d[..., 1]) / 8
        sm[..., -1] = (d[..., -2] + 7 * d[..., -1]) / 8
    else:
        sm = d.clone()
    total = sm.sum(-1, keepdim=True)
    usable = total[..., 0] > 0
    p = sm / total.clamp(min=1e-300)
    p = torch.where(p > 0, ((1 - p) / torch.log(1 / p.clamp(min=1e-300))).clamp(min=0) ** damping, torch.zeros_like(p))
    p = torch.where(p.isfinite(), p, torch.zeros_like(p))
    c = p.cumsum(-1)
    targets = c[..., -1:] * torch.arange(1, nb, dtype=d.dtype, device=d.device) / nb
    j = torch.searchsorted(c.contiguous(), targets.contiguous()).clamp(max=nb - 1)
    c_prev = torch.where(j > 0, torch.gather(c, -1, (j - 1).clamp(min=0)), torch.zeros_like(targets))
    dj = torch.gather(p, -1, j).clamp(min=1e-300)
    e_lo, e_hi = torch.gather(edges, -1, j), torch.gather(edges, -1, j + 1)
    inner = e_lo + ((targets - c_prev) / dj).clamp(0, 1) * (e_hi - e_lo)
    new = torch.cat([edges[..., :1], inner, edges[..., -1:]], dim=-1)
    ok = usable & (p.sum(-1) > 0) & (new[..., 1:] > new[..., :-1]).all(-1)
    return torch.where(ok.unsqueeze(-1), new, edges)


def adapt_vegas(
    model: MatrixElement,
    x: Tensor,
    theta: Tensor,
    *,
    bins: int = 64,
    iterations: int = 8,
    samples: int = 2048,
    damping: float = 1.5,
    generator: torch.Generator | None = None,
    key_seed: int = 0,
    chunk_calls: int = 2**21,
    progress: bool = False,
) -> tuple[VegasProposal, int]:
    r"""Adapt one grid per event on :math:`g(z;x_i,\theta_i)` and freeze it as a proposal.

    Args:
        model: The matrix-element model.
        x: Events, ``(N, D)``.
        theta: Point the grids are adapted at (e.g. the reference), ``(P,)`` or ``(N, P)``.
        bins: Bins per dimension.
        iterations: Adaptation iterations.
        samples: Integrand calls per event and iteration.
        damping: The exponent ``a`` of the damping (0 freezes the grid).
        generator: Randomness of the adaptation.
        key_seed: Seed of the event keys (the default matches the likelihood's).
        chunk_calls: Events are processed in chunks of about this many calls.
        progress: Show a progress bar over iterations.

    Returns:
        ``(proposal, calls)``: the frozen grids and the integrand calls spent per event.
    """
    if bins < 2 or iterations < 1 or samples < 2:
        raise ConfigError(f"adapt_vegas: need bins >= 2, iterations >= 1, samples >= 2; got {bins}, {iterations}, {samples}.")
    x = torch.as_tensor(x, dtype=torch.float64)
    n, dim = x.shape[0], model.dim
    theta = torch.as_tensor(theta, dtype=torch.float64).reshape(-1, len(model.parameter_names)).expand(n, -1)
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64).expand(n, dim, -1).contiguous()
    keys = event_keys(x, key_seed)
    per_chunk = max(1, chunk_calls // samples)
    for _ in tqdm(range(iterations), desc="vegas", disable=not progress):
        grid = VegasProposal(model.bounds, edges, keys, key_seed=key_seed)
        new_edges = []
        for s in range(0, n, per_chunk):
            xs, ts, es = x[s:s + per_chunk], theta[s:s + per_chunk], edges[s:s + per_chunk]
            u = torch.rand(xs.shape[0], samples, dim, generator=generator, dtype=torch.float64).clamp(2.0**-40, 1 - 2.0**-40)
            v, log_jac, idx = grid.map(u, es)
            lo, hi = model.bounds.unbind(-1)
            z = lo + (hi - lo) * v
            with torch.no_grad():
                log_w = model.log_weights(model.prepare(z, -grid._log_volume - log_jac, xs), xs, ts)
            peak = log_w.max(1, keepdim=True).values
            w2 = torch.exp(2 * (log_w - torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))))  # (n, S)
            d = torch.zeros(xs.shape[0], dim, bins, dtype=torch.float64)
            d.scatter_add_(2, idx.permute(0, 2, 1), w2.unsqueeze(1).expand(-1, dim, -1))
            counts = torch.zeros_like(d).scatter_add_(2, idx.permute(0, 2, 1), torch.ones_like(d[:, :, :1]).expand(-1, -1, samples))
            new_edges.append(_refine(es, d / counts.clamp(min=1), damping))
        edges = torch.cat(new_edges)
    return VegasProposal(model.bounds, edges, keys, key_seed=key_seed), iterations * samples
