r"""Kinematics of the shower: the hard process, Minkowski products and the Catani–Seymour final-final map.

Shared by the batched veto algorithm (:mod:`~sbilab.simulators.shower.engine`); pure tensor
functions without state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .kernels import NF

__all__ = ["mdot", "hard_process", "dipole_map", "z_minus"]

_F64 = torch.float64


def mdot(a: Tensor, b: Tensor) -> Tensor:
    """Minkowski product of ``(..., 4)`` vectors (metric +,-,-,-)."""
    return a[..., 0] * b[..., 0] - (a[..., 1:] * b[..., 1:]).sum(-1)


def hard_process(n: int, ecms: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    r"""e⁺e⁻ → qq̄: back-to-back massless q, q̄ with :math:`\cos\vartheta \sim 1 + \cos^2\vartheta`.

    The flavour is uniform over d, u, s, c, b (massless). :math:`\cos\vartheta` is the real root
    of :math:`c^3 + 3c + 4 - 8u = 0`, :math:`c = -2\sinh(\tfrac13 \operatorname{arsinh}(2 - 4u))`.

    Returns:
        momenta ``(n, 2, 4)`` float64, pid ``(n, 2)`` (quark, antiquark).
    """
    u = torch.rand(n, 3, generator=generator, dtype=_F64)
    cos = -2.0 * torch.sinh(torch.asinh(2.0 - 4.0 * u[:, 0]) / 3.0)
    sin = torch.sqrt((1.0 - cos**2).clamp(min=0.0))
    phi = 2.0 * math.pi * u[:, 1]
    direction = torch.stack([sin * torch.cos(phi), sin * torch.sin(phi), cos], dim=1)
    energy = torch.full((n, 1), ecms / 2.0, dtype=_F64)
    momenta = torch.stack([torch.cat([energy, energy * direction], 1), torch.cat([energy, -energy * direction], 1)], 1)
    flavour = 1 + (u[:, 2] * NF).long().clamp(max=NF - 1)
    return momenta, torch.stack([flavour, -flavour], dim=1)


def _transverse_basis(pij: Tensor, pk: Tensor) -> tuple[Tensor, Tensor]:
    r"""Two unit spacelike vectors ``(B, 4)`` orthogonal to the massless ``pij``, ``pk`` ``(B, 4)`` and to each other.

    :math:`n_1` is the axis :math:`r = (0, \hat e)` projected on the plane orthogonal to both,
    :math:`n = r - [(r\cdot p_k)\,p_{ij} + (r\cdot p_{ij})\,p_k]/(p_{ij}\cdot p_k)`, with
    :math:`n^2 = -1 - 2 a_e b_e/(p_{ij}\cdot p_k)` for the spatial parts a, b: the axis with the
    largest :math:`a_e b_e` keeps :math:`|n^2| \ge 2/3`. :math:`n_2 = \epsilon(p_{ij}, p_k, n_1)/(p_{ij}\cdot p_k)`,
    in three-vector form :math:`(\vec a\cdot(\vec b\times\vec w),\ A_0\,\vec b\times\vec w + B_0\,\vec w\times\vec a
    + n_0\,\vec a\times\vec b)` for :math:`n_1 = (n_0, \vec w)`, orthogonal to all three by construction.
    """
    ea, a, eb, b = pij[:, 0], pij[:, 1:], pk[:, 0], pk[:, 1:]
    pp = ea * eb - (a * b).sum(1)
    best = (a * b).argmax(dim=1, keepdim=True)
    ae, be = a.gather(1, best).squeeze(1), b.gather(1, best).squeeze(1)
    onehot = torch.zeros_like(a).scatter_(1, best, 1.0)
    scale = 1.0 / (pp * torch.sqrt(1.0 + 2.0 * ae * be / pp))
    n0 = (be * ea + ae * eb) * scale
    w = onehot * (pp * scale).unsqueeze(1) + (be * scale).unsqueeze(1) * a + (ae * scale).unsqueeze(1) * b
    bw, wa, ab = torch.linalg.cross(b, w), torch.linalg.cross(w, a), torch.linalg.cross(a, b)
    m0 = (a * bw).sum(1)
    m = ea.unsqueeze(1) * bw + eb.unsqueeze(1) * wa + n0.unsqueeze(1) * ab
    return torch.cat([n0.unsqueeze(1), w], 1), torch.cat([m0.unsqueeze(1), m], 1) / pp.unsqueeze(1)


def dipole_map(pij: Tensor, pk: Tensor, z: Tensor, omz: Tensor, y: Tensor, phi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Catani–Seymour final-final map :math:`(\tilde p_{ij}, \tilde p_k) \to (p_i, p_j, p_k)` (module docstring).

    Args:
        pij, pk: ``(B, 4)`` massless momenta of emitter and spectator.
        z, omz, y, phi: ``(B,)``; ``omz`` = 1 - z computed without cancellation.
    """
    m2 = 2.0 * mdot(pij, pk)
    kt = torch.sqrt((m2 * y * z * omz).clamp(min=0.0))
    n1, n2 = _transverse_basis(pij, pk)
    k_perp = kt.unsqueeze(-1) * (torch.cos(phi).unsqueeze(-1) * n1 + torch.sin(phi).unsqueeze(-1) * n2)
    z_, omz_, y_ = z.unsqueeze(-1), omz.unsqueeze(-1), y.unsqueeze(-1)
    pi = z_ * pij + omz_ * y_ * pk + k_perp
    pj = omz_ * pij + z_ * y_ * pk - k_perp
    return pi, pj, (1.0 - y_) * pk


def z_minus(m2: Tensor, t0: float) -> Tensor:
    r""":math:`z_- = 2t_0/(m^2(1 + \sqrt{1 - 4t_0/m^2}))` (no cancellation; :math:`z_+ = 1 - z_-`), ``m2 (...)`` above :math:`4t_0`."""
    return 2.0 * t0 / (m2 * (1.0 + torch.sqrt((1.0 - 4.0 * t0 / m2).clamp(min=0.0))))
