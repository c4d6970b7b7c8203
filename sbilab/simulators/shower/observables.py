r"""Event shapes and jet rates of e⁺e⁻ final states, batched over padded particle sets.

Every function takes four-momenta ``p: (N, M, 4)`` (E, px, py, pz) with ``mask: (N, M)`` (padding
ignored) and works in float64. These are parton-level observables: the shower has **no
hadronisation**, so they describe partons above the cutoff :math:`t_0`, not hadrons.

* thrust :math:`T = \max_{\hat n} \sum_i |\vec p_i\cdot\hat n| / \sum_i |\vec p_i|` (:func:`thrust`),
* hemisphere masses :math:`\rho_{H,L} = m^2_{H,L}/E_\mathrm{vis}^2` (:func:`hemisphere_masses`),
* Durham jet rates :math:`y_{23}, y_{34}` with
  :math:`y_{ij} = 2\min(E_i^2, E_j^2)(1-\cos\theta_{ij})/E_\mathrm{vis}^2` and E-scheme
  recombination (Catani et al., Phys. Lett. B 269 (1991) 432) (:func:`durham_rates`),
* the C-parameter :math:`C = \tfrac32 \sum_{i,j}|\vec p_i||\vec p_j|\sin^2\theta_{ij}/(\sum_k|\vec p_k|)^2`,
* energy correlators :math:`e_2^{(\beta)} = \sum_{i<j} E_i E_j\,(2(1-\cos\theta_{ij}))^{\beta/2}/E_\mathrm{vis}^2`
  (Larkoski, Salam, Thaler, arXiv:1305.0007) (:func:`energy_correlator`) and the energy–energy
  correlation histogram (:func:`eec_histogram`),
* multiplicity,
* each particle in the thrust frame (:func:`thrust_frame`): the rotation-invariant per-particle
  input of set embeddings.

:func:`event_observables` stacks the event shapes into ``(N, D)`` with :data:`OBSERVABLES` as names.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["OBSERVABLES", "Y_FLOOR", "thrust", "hemisphere_masses", "durham_rates", "c_parameter", "energy_correlator",
           "eec_histogram", "multiplicity", "thrust_frame", "FRAME_FEATURES", "event_observables"]

_F64 = torch.float64
Y_FLOOR = 1e-6
"""Floor of the Durham rates before the logarithm (events with fewer partons than jets have y = 0)."""
OBSERVABLES = ("tau", "rho_heavy", "rho_light", "log_y23", "log_y34", "multiplicity", "c_parameter", "e2_b05", "e2_b1")
"""Names of the columns of :func:`event_observables`: 1 - T, ρ_H, ρ_L, ln y23, ln y34, n, C, e2 at β = 0.5 and 1."""


def _clean(p: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.unsqueeze(-1), p.to(_F64), torch.zeros((), dtype=_F64, device=p.device))


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def multiplicity(mask: Tensor) -> Tensor:
    """Number of particles per event, ``(N,)`` float64."""
    return mask.sum(dim=1).to(_F64)


def thrust(p: Tensor, mask: Tensor, *, iterations: int = 12, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    r"""Thrust :math:`T` ``(N,)`` and thrust axis ``(N, 3)``.

    The axis maximising :math:`\sum_i|\vec p_i\cdot\hat n|` is :math:`\propto \sum_i \epsilon_i \vec p_i`
    for the signs :math:`\epsilon_i = \mathrm{sign}(\vec p_i\cdot\hat n)`; the fixed-point iteration
    :math:`\hat n \leftarrow \sum_i \mathrm{sign}(\vec p_i\cdot\hat n)\,\vec p_i` increases the sum
    monotonically and is started from every particle's direction; the best end point is kept
    (tested against the exact :math:`O(M^3)` search over all sign patterns).
    """
    q = _clean(p, mask)[..., 1:]
    n = q.shape[0]
    values, axes = torch.empty(n, dtype=_F64, device=q.device), torch.empty(n, 3, dtype=_F64, device=q.device)
    for sl in _chunks(n, chunk):
        v, m = q[sl], mask[sl]
        norm = v.norm(dim=-1)
        total = norm.sum(dim=1).clamp(min=1e-300)
        axis = torch.where(m.unsqueeze(-1), v, v[:, :1].expand_as(v))  # seeds (B, S, 3)
        for _ in range(iterations):
            sign = torch.sign(torch.einsum("bsk,bmk->bsm", axis, v))
            axis = torch.einsum("bsm,bmk->bsk", sign + (sign == 0).to(_F64), v)
        axis = axis / axis.norm(dim=-1, keepdim=True).clamp(min=1e-300)
        score = torch.einsum("bsk,bmk->bsm", axis, v).abs().sum(-1)
        best = score.argmax(dim=1)
        rows = torch.arange(len(best), device=q.device)
        values[sl] = (score[rows, best] / total).clamp(max=1.0)
        axes[sl] = axis[rows, best]
    return values, axes


def hemisphere_masses(p: Tensor, mask: Tensor, axis: Tensor) -> tuple[Tensor, Tensor]:
    r"""Heavy and light hemisphere masses :math:`\rho = m^2/E_\mathrm{vis}^2`, ``(N,)`` each.

    Hemispheres are split by the plane orthogonal to ``axis (N, 3)`` (the thrust axis).
    """
    q = _clean(p, mask)
    side = (torch.einsum("nmk,nk->nm", q[..., 1:], axis.to(_F64)) > 0).unsqueeze(-1)
    a, b = (q * side).sum(1), (q * ~side).sum(1)
    evis2 = q[..., 0].sum(1).clamp(min=1e-300) ** 2
    ma = (a[:, 0] ** 2 - (a[:, 1:] ** 2).sum(-1)).clamp(min=0.0) / evis2
    mb = (b[:, 0] ** 2 - (b[:, 1:] ** 2).sum(-1)).clamp(min=0.0) / evis2
    return torch.maximum(ma, mb), torch.minimum(ma, mb)


def _cos_matrix(v: Tensor) -> Tensor:
    unit = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-300)
    return (unit @ unit.transpose(1, 2)).clamp(-1.0, 1.0)


def durham_rates(p: Tensor, mask: Tensor, *, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    r"""Durham :math:`y_{23}` and :math:`y_{34}`, ``(N,)`` each (0 when the event has fewer partons).

    Pseudojets are merged pairwise (smallest :math:`y_{ij}` first, E-scheme :math:`p_i + p_j`)
    down to two; :math:`y_{n,n+1}` is the smallest :math:`y_{ij}` when :math:`n+1` pseudojets remain.
    Only the distances of the merged pseudojet are recomputed after each merge.
    """
    q_all = _clean(p, mask)
    n = q_all.shape[0]
    y23, y34 = torch.zeros(n, dtype=_F64, device=q_all.device), torch.zeros(n, dtype=_F64, device=q_all.device)
    for sl in _chunks(n, chunk):
        q, alive = q_all[sl].clone(), mask[sl].clone()
        b, m = alive.shape
        if m < 3:
            continue
        evis2 = q[..., 0].sum(1).clamp(min=1e-300) ** 2
        inf = torch.tensor(float("inf"), dtype=_F64, device=q.device)
        energy2 = q[..., 0] ** 2
        dist = 2.0 * torch.minimum(energy2.unsqueeze(2), energy2.unsqueeze(1)) * (1.0 - _cos_matrix(q[..., 1:])) / evis2[:, None, None]
        eye = torch.eye(m, dtype=torch.bool, device=q.device)
        dist = torch.where(alive.unsqueeze(2) & alive.unsqueeze(1) & ~eye, dist, inf)
        for _ in range(m - 2):
            count = alive.sum(1)
            work = torch.nonzero(count > 2).squeeze(1)
            if work.numel() == 0:
                break
            flat = dist[work].reshape(work.numel(), -1)
            ymin, where = flat.min(dim=1)
            i, j = where // m, where % m
            c = count[work]
            y34[sl][work[c == 4]] = ymin[c == 4]
            y23[sl][work[c == 3]] = ymin[c == 3]
            merged = q[work, i] + q[work, j]
            q[work, i] = merged
            alive[work, j] = False
            dist[work, j, :] = inf
            dist[work, :, j] = inf
            # distances of the merged pseudojet i to every other alive pseudojet
            e2 = q[work, :, 0] ** 2
            v = q[work, :, 1:]
            cos = torch.einsum("bmk,bk->bm", v, merged[:, 1:]) / (v.norm(dim=-1) * merged[:, 1:].norm(dim=-1, keepdim=True)).clamp(min=1e-300)
            d = 2.0 * torch.minimum(e2, (merged[:, 0] ** 2).unsqueeze(1)) * (1.0 - cos.clamp(-1.0, 1.0)) / evis2[work].unsqueeze(1)
            ok = alive[work] & (torch.arange(m, device=q.device).unsqueeze(0) != i.unsqueeze(1))
            d = torch.where(ok, d, inf)
            dist[work, i, :] = d
            dist[work, :, i] = d
    return y23, y34


def c_parameter(p: Tensor, mask: Tensor) -> Tensor:
    r"""C-parameter :math:`\tfrac32\sum_{i,j}|\vec p_i||\vec p_j|\sin^2\theta_{ij}/(\sum_k|\vec p_k|)^2`, ``(N,)``."""
    v = _clean(p, mask)[..., 1:]
    norm = v.norm(dim=-1)
    sin2 = 1.0 - _cos_matrix(v) ** 2
    pair = (norm.unsqueeze(2) * norm.unsqueeze(1) * sin2).sum((1, 2))
    return 1.5 * pair / norm.sum(1).clamp(min=1e-300) ** 2


def energy_correlator(p: Tensor, mask: Tensor, beta: float) -> Tensor:
    r"""Two-point energy correlator :math:`e_2^{(\beta)}`, ``(N,)`` (module docstring); :math:`\beta > 0`."""
    q = _clean(p, mask)
    energy = q[..., 0]
    angle = (2.0 * (1.0 - _cos_matrix(q[..., 1:]))).clamp(min=0.0).pow(beta / 2.0)
    pair = (energy.unsqueeze(2) * energy.unsqueeze(1) * angle).sum((1, 2)) / 2.0
    return pair / energy.sum(1).clamp(min=1e-300) ** 2


def eec_histogram(p: Tensor, mask: Tensor, bins: Tensor, *, weights: Tensor | None = None) -> Tensor:
    r"""Energy–energy correlation :math:`\Sigma(\cos\chi)`: pairs :math:`i \ne j` weighted by
    :math:`E_iE_j/E_\mathrm{vis}^2` (times the event weight), histogrammed in ``bins`` of
    :math:`\cos\chi` (edges, ``(B+1,)``), summed over events, ``(B,)``.
    """
    q = _clean(p, mask)
    energy = q[..., 0]
    w = energy.unsqueeze(2) * energy.unsqueeze(1) / energy.sum(1).clamp(min=1e-300)[:, None, None] ** 2
    if weights is not None:
        w = w * weights.to(_F64)[:, None, None]
    off = ~torch.eye(q.shape[1], dtype=torch.bool, device=q.device)
    pair = mask.unsqueeze(2) & mask.unsqueeze(1) & off
    cos = _cos_matrix(q[..., 1:])[pair]
    edges = bins.to(_F64)
    index = torch.bucketize(cos, edges, right=True) - 1
    inside = (index >= 0) & (index < len(edges) - 1)
    return torch.zeros(len(edges) - 1, dtype=_F64).index_add_(0, index[inside], w[pair][inside])


FRAME_FEATURES = ("x_E", "x_L", "x_T")
"""Features of :func:`thrust_frame`: energy, longitudinal and transverse momentum to the thrust axis over E_vis."""


def thrust_frame(p: Tensor, mask: Tensor) -> Tensor:
    r"""Every particle as :math:`(E_i, |\vec p_i\cdot\hat n_T|, |\vec p_i\times\hat n_T|)/E_\mathrm{vis}`, ``(N, M, 3)`` float64.

    Invariant under rotations of the event and under the sign of the thrust axis
    :math:`\hat n_T` (:func:`thrust`), so a set embedding need not learn the isotropy of the
    hard process; the padding (``mask`` False) is zero.
    """
    q = _clean(p, mask)
    _, axis = thrust(p, mask)
    longitudinal = torch.einsum("nmk,nk->nm", q[..., 1:], axis)
    transverse = (q[..., 1:] - longitudinal.unsqueeze(-1) * axis.unsqueeze(1)).norm(dim=-1)
    evis = q[..., 0].sum(1, keepdim=True).clamp(min=1e-300)
    return torch.stack([q[..., 0], longitudinal.abs(), transverse], dim=-1) / evis.unsqueeze(-1)


def event_observables(p: Tensor, mask: Tensor) -> Tensor:
    """The per-event observables :data:`OBSERVABLES`, ``(N, 9)`` float64."""
    t, axis = thrust(p, mask)
    heavy, light = hemisphere_masses(p, mask, axis)
    y23, y34 = durham_rates(p, mask)
    columns = [1.0 - t, heavy, light, torch.log(y23.clamp(min=Y_FLOOR)), torch.log(y34.clamp(min=Y_FLOOR)),
               multiplicity(mask), c_parameter(p, mask), energy_correlator(p, mask, 0.5), energy_correlator(p, mask, 1.0)]
    return torch.stack(columns, dim=1)
