r"""The batched veto algorithm: one trial per still-active event per step, all events at once.

Algorithm (Höche's final-state dipole shower, arXiv:1411.4085, with the competition of the
dipoles written as one sum of rates). For an event at scale :math:`t`, every colour-connected
emitter–spectator pair :math:`(i, k)` and kernel :math:`a` allowed for the emitter's flavour
is a candidate with z-integrated overestimate

.. math:: I_{ika} = \int_{z_-}^{z_+} \hat P_a(z)\,dz, \qquad
    z_\pm = \tfrac12\big(1 \pm \sqrt{1 - 4t_0/m_{ik}^2}\big),

(none if :math:`m^2_{ik} < 4t_0`). The next trial scale is drawn from the Sudakov factor of the
total rate :math:`R = \sum I_{ika}` with the exact one-loop coupling
(:meth:`~.kernels.RunningCoupling.next_scale`); the candidate is chosen with probability
:math:`I_{ika}/R` (equivalent to the competition of one trial per candidate), z from
:math:`\hat P_a`, :math:`y = t/(m^2_{ik} z(1-z))`; trials with :math:`y \ge 1` are vetoed,
others accepted with probability :math:`w_\theta = (1-y) P_a(z, y)/\hat P_a(z)`. Accepted
trials map the momenta with the Catani–Seymour final-final dipole map

.. math::
    p_i = z\,\tilde p_{ij} + (1-z)\,y\,\tilde p_k + k_\perp, \quad
    p_j = (1-z)\,\tilde p_{ij} + z\,y\,\tilde p_k - k_\perp, \quad
    p_k = (1-y)\,\tilde p_k, \quad -k_\perp^2 = m^2_{ik}\,y\,z(1-z),

and update the leading-colour partners: the emitted gluon is inserted between emitter and
spectator on their colour line; g → qq̄ cuts the gluon's line into two. An event stops when
the next scale falls below :math:`t_0`. Every draw comes from one ``torch.Generator``; rates are
cached per event and recomputed only for events whose kinematics changed.

The colour state is a doubly linked list per event: ``nxt[i]`` is the parton whose anticolour
carries i's colour, ``prv[i]`` the one whose colour carries i's anticolour (-1: none). e⁺e⁻ → qq̄
never forms closed gluon loops, so each partner is a distinct dipole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .history import COLUMNS, HISTORY_VERSION
from .kernels import CA, CF, KERNEL_GG, KERNEL_GQ, KERNEL_QQ, NF, TR, Overestimate, RunningCoupling, p_gg, p_gq

__all__ = ["ShowerSettings", "ShowerState", "run_shower", "hard_process", "dipole_map", "mdot"]

_F64 = torch.float64
GLUON = 21


@dataclass(frozen=True)
class ShowerSettings:
    """Physics settings of one shower: centre-of-mass energy (GeV), cutoff t0 (GeV²), coupling, overestimate."""

    ecms: float
    t0: float
    coupling: RunningCoupling
    overestimate: Overestimate

    @property
    def t_start(self) -> float:
        r"""Starting scale :math:`Q^2/4`: :math:`t = m^2 y z(1-z) \le m^2/4 \le Q^2/4` for every dipole."""
        return self.ecms**2 / 4.0


@dataclass
class ShowerState:
    """Final state and history of a batch of showers.

    Attributes:
        momenta: ``(N, M, 4)`` float64 four-momenta (E, px, py, pz); padding is zero.
        pid: ``(N, M)`` PDG ids (0 in the padding).
        n_particles: ``(N,)``.
        history: ``(N, T, K)`` float64 trials (columns of :data:`~.history.COLUMNS`).
        n_trials: ``(N,)`` stored trials per event.
    """

    momenta: Tensor
    pid: Tensor
    n_particles: Tensor
    history: Tensor
    n_trials: Tensor


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
    """Two unit spacelike vectors ``(B, 4)`` orthogonal to the massless ``pij``, ``pk`` and to each other."""
    pp = mdot(pij, pk).unsqueeze(-1).unsqueeze(-1)
    axes = torch.eye(4, dtype=pij.dtype, device=pij.device)[1:]  # (3, 4): (0, e_a)
    # project (0, e_a) on the plane orthogonal to pij and pk: n = r - [(r.pk) pij + (r.pij) pk]/(pij.pk)
    n = axes + (pk[:, None, 1:].transpose(1, 2) * pij[:, None, :] + pij[:, None, 1:].transpose(1, 2) * pk[:, None, :]) / pp
    norm2 = -mdot(n, n)
    best = norm2.argmax(dim=1)
    rows = torch.arange(len(pij), device=pij.device)
    n1 = n[rows, best] / norm2[rows, best].sqrt().unsqueeze(-1)
    v = n + mdot(n, n1.unsqueeze(1)).unsqueeze(-1) * n1.unsqueeze(1)  # remove the n1 component (n1.n1 = -1)
    vnorm2 = -mdot(v, v)
    second = vnorm2.argmax(dim=1)
    n2 = v[rows, second] / vnorm2[rows, second].sqrt().unsqueeze(-1)
    return n1, n2


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


def _z_limits(m2: Tensor, t0: float) -> tuple[Tensor, Tensor]:
    r""":math:`z_- = 2t_0/(m^2(1 + \sqrt{1 - 4t_0/m^2}))` (no cancellation) and :math:`z_+ = 1 - z_-`."""
    root = torch.sqrt((1.0 - 4.0 * t0 / m2).clamp(min=0.0))
    zm = 2.0 * t0 / (m2 * (1.0 + root))
    return zm, 1.0 - zm


class _Veto:
    """State of the batched veto algorithm for ``n`` events (see the module docstring).

    Momenta are stored component-major, ``P (4, n, M)``, and every per-particle access goes through
    flat indices ``e * M + i`` (one ``index_select`` / ``index_copy_`` per access).
    """

    def __init__(self, theta: Tensor, settings: ShowerSettings, generator: torch.Generator | None) -> None:
        self.s = settings
        self.gen = generator
        self.theta = theta.to(_F64)
        n = theta.shape[0]
        self.n, self.m_cap = n, 8
        self.P = torch.zeros(4, n, self.m_cap, dtype=_F64)
        self.pid = torch.zeros(n, self.m_cap, dtype=torch.long)
        self.nxt = torch.full((n, self.m_cap), -1, dtype=torch.long)
        self.prv = torch.full((n, self.m_cap), -1, dtype=torch.long)
        momenta, pid = hard_process(n, settings.ecms, generator)
        self.P[:, :, :2] = momenta.permute(2, 0, 1)
        self.pid[:, :2] = pid
        self.nxt[:, 0], self.prv[:, 1] = 1, 0
        self.npart = torch.full((n,), 2, dtype=torch.long)
        self.t = torch.full((n,), settings.t_start, dtype=_F64)
        self.trials: list[tuple[Tensor, Tensor, Tensor]] = []  # per step: event (B,), stored? (B,), row (B, K)
        self.rate = torch.zeros(n, self.m_cap, 4, dtype=_F64)  # candidate rates: (side, kind) per emitter slot
        self.cum = torch.zeros(n, 4 * self.m_cap, dtype=_F64)
        everyone = torch.arange(n)
        self._update_rates(everyone, torch.tensor([[0, 1]]).expand(n, 2))
        self.active = self.cum[:, -1] > 0

    # ------------------------------------------------------------------ storage
    def _get(self, flat: Tensor) -> Tensor:
        """Momenta ``(4, B)`` of the particles at flat indices ``flat (B,)``."""
        return self.P.view(4, -1).index_select(1, flat)

    def _grow_particles(self, needed: int) -> None:
        add = max(self.m_cap, needed - self.m_cap)
        n = self.n
        self.P = torch.cat([self.P, self.P.new_zeros(4, n, add)], 2)
        self.pid = torch.cat([self.pid, self.pid.new_zeros(n, add)], 1)
        self.nxt = torch.cat([self.nxt, self.nxt.new_full((n, add), -1)], 1)
        self.prv = torch.cat([self.prv, self.prv.new_full((n, add), -1)], 1)
        self.rate = torch.cat([self.rate, self.rate.new_zeros(n, add, 4)], 1)
        self.cum = torch.cat([self.cum, self.cum[:, -1:].expand(n, 4 * add)], 1)
        self.m_cap += add

    # ------------------------------------------------------------------ rates
    def _update_rates(self, e: Tensor, slots: Tensor) -> None:
        """Recompute the rates of emitter ``slots (B, S)`` of events ``e (B,)`` (-1: none), then ``cum[e] (B, 4M)``.

        Candidate c = 4i + 2·side + kind: side 0 is the colour partner ``nxt[i]``, side 1 the
        anticolour partner ``prv[i]``; kind 0 is q → qg or g → gg, kind 1 g → qq̄.
        """
        b, width, m, t0 = e.numel(), slots.shape[1], self.m_cap, self.s.t0
        valid = slots >= 0
        flat = (e.unsqueeze(1) * m + slots.clamp(min=0)).reshape(-1)
        pe = self._get(flat).view(4, b, width)
        gluon = self.pid.view(-1).index_select(0, flat).view(b, width) == GLUON
        over = self.s.overestimate
        rates = []
        for partner in (self.nxt, self.prv):
            part = partner.view(-1).index_select(0, flat).view(b, width)
            pk = self._get((e.unsqueeze(1) * m + part.clamp(min=0)).reshape(-1)).view(4, b, width)
            m2 = 2.0 * (pe[0] * pk[0] - pe[1] * pk[1] - pe[2] * pk[2] - pe[3] * pk[3])
            ok = (part >= 0) & (m2 > 4.0 * t0)
            zm, zp = _z_limits(torch.where(ok, m2, 8.0 * t0), t0)
            log_range, width_z = torch.log(zp / zm), zp - zm
            r0 = torch.where(gluon, CA * log_range, over.soft * log_range + over.flat * width_z)
            r1 = torch.where(gluon, NF * 0.5 * TR * width_z, 0.0)
            rates += [r0 * ok, r1 * ok]
        rate = torch.stack(rates, dim=-1)[valid]  # (valid slots, 4)
        self.rate.view(-1, 4).index_copy_(0, flat[valid.reshape(-1)], rate)
        self.cum.index_copy_(0, e, self.rate.index_select(0, e).view(b, 4 * m).cumsum(dim=-1))

    # ------------------------------------------------------------------ one step
    def step(self) -> bool:
        """One trial for every active event; returns whether any event is still active."""
        idx = torch.nonzero(self.active).squeeze(1)
        if idx.numel() == 0:
            return False
        s, over, m = self.s, self.s.overestimate, self.m_cap
        u = torch.rand(7, idx.numel(), generator=self.gen, dtype=_F64)
        total = self.cum.view(-1).index_select(0, idx * (4 * m) + (4 * m - 1))
        t = s.coupling.next_scale(self.t.index_select(0, idx), total, u[0])
        self.t.index_copy_(0, idx, t)
        go = t > s.t0
        if not bool(go.all()):
            self.active.index_fill_(0, idx[~go], False)
            idx, u, t, total = idx[go], u[:, go], t[go], total[go]
            if idx.numel() == 0:
                return bool(self.active.any())
        if 4 * idx.numel() > self.n:  # search every row (O(n log M)) rather than copy the active rows (O(B M))
            target = torch.zeros(self.n, 1, dtype=_F64).index_copy_(0, idx, (u[1] * total).unsqueeze(1))
            c = torch.searchsorted(self.cum, target, right=True).squeeze(1).index_select(0, idx)
        else:
            c = torch.searchsorted(self.cum.index_select(0, idx), (u[1] * total).unsqueeze(1), right=True).squeeze(1)
        c = c.clamp(max=4 * m - 1)
        i, side, kind = c // 4, (c // 2) % 2, c % 2
        fi = idx * m + i
        k = torch.where(side == 0, self.nxt.view(-1).index_select(0, fi), self.prv.view(-1).index_select(0, fi))
        pij, pk = self._get(fi), self._get(idx * m + k)
        m2 = 2.0 * (pij[0] * pk[0] - pij[1] * pk[1] - pij[2] * pk[2] - pij[3] * pk[3])
        zm, zp = _z_limits(m2, s.t0)
        flavour = self.pid.view(-1).index_select(0, fi)
        ktype = torch.where(flavour == GLUON, KERNEL_GG + kind, torch.full_like(kind, KERNEL_QQ))
        qq, gg = ktype == KERNEL_QQ, ktype == KERNEL_GG
        log_range, width = torch.log(zp / zm), zp - zm
        soft_w = torch.where(qq, over.soft * log_range, gg.to(_F64))
        flat_w = torch.where(qq, over.flat * width, (ktype == KERNEL_GQ).to(_F64))
        soft = u[2] * (soft_w + flat_w) < soft_w
        omz_soft = zp * (zm / zp).pow(u[3])
        z_flat = zm + width * u[3]
        omz = torch.where(soft, omz_soft, 1.0 - z_flat)
        z = torch.where(soft, 1.0 - omz_soft, z_flat)
        y = t / (m2 * z * omz)
        inside = y < 1.0
        p_hat = torch.where(qq, over.soft / omz + over.flat, torch.where(gg, CA / omz, torch.full_like(z, NF * 0.5 * TR)))
        th = self.theta.index_select(0, idx)
        zy, yz_omz = omz + z * y, y * z * omz
        p_qq = CF * (th[:, 0] * 2.0 * z * (1.0 - y) / zy + th[:, 1] * omz + th[:, 2] * yz_omz)
        value = torch.where(qq, p_qq, torch.where(gg, p_gg(z, y), p_gq(z)))
        accept = inside & (u[4] < (1.0 - y) * value / p_hat)
        phi = 2.0 * math.pi * u[5]
        quark = 1 + (u[6] * NF).long().clamp(max=NF - 1)
        emitted = torch.where(ktype == KERNEL_GQ, -quark, torch.full_like(quark, GLUON))
        self._record(idx, inside, (t, z, y, phi, ktype, i, k, flavour, emitted, accept, p_hat))
        a = torch.nonzero(accept).squeeze(1)
        if a.numel():
            self._emit(idx[a], i[a], k[a], side[a], ktype[a], quark[a], pij[:, a], pk[:, a], z[a], omz[a], y[a], phi[a])
        return bool(self.active.any())

    def _record(self, idx: Tensor, inside: Tensor, values: tuple[Tensor, ...]) -> None:
        """Log this step's trials; those with ``inside`` False (vetoed by y >= 1) are dropped in :meth:`result`."""
        version = torch.full_like(values[0], float(HISTORY_VERSION))
        self.trials.append((idx, inside, torch.stack([v.to(_F64) for v in values] + [version], dim=1)))

    def _emit(self, e: Tensor, i: Tensor, k: Tensor, side: Tensor, ktype: Tensor, quark: Tensor,
              pij: Tensor, pk: Tensor, z: Tensor, omz: Tensor, y: Tensor, phi: Tensor) -> None:
        """Apply accepted splittings: new momenta, flavours and colour partners; refresh the rates."""
        j = self.npart.index_select(0, e)
        if int(j.max()) + 1 > self.m_cap:
            self._grow_particles(int(j.max()) + 1)
        m = self.m_cap
        fi, fk, fj = e * m + i, e * m + k, e * m + j
        pi, pj, pk_new = dipole_map(pij.T, pk.T, z, omz, y, phi)
        flat_p = self.P.view(4, -1)
        flat_p.index_copy_(1, fi, pi.T.contiguous())
        flat_p.index_copy_(1, fk, pk_new.T.contiguous())
        flat_p.index_copy_(1, fj, pj.T.contiguous())
        self.npart.index_copy_(0, e, j + 1)
        nxt, prv, pid = self.nxt.view(-1), self.prv.view(-1), self.pid.view(-1)
        insert = ktype != KERNEL_GQ
        for which, forward, backward in ((insert & (side == 0), nxt, prv), (insert & (side == 1), prv, nxt)):
            ii, kk, jj, base = fi[which], fk[which], fj[which], e[which] * m  # flat indices; the lists hold local ones
            forward[ii], backward[jj], forward[jj], backward[kk] = jj - base, ii - base, kk - base, jj - base
        pid[fj[insert]] = GLUON
        split = ~insert  # g -> q qbar: i becomes the quark (keeps its colour line), j the antiquark (takes the anticolour line)
        es, ii, jj, fl = e[split], fi[split], fj[split], quark[split]
        before = prv[ii]
        pid[ii], pid[jj] = fl, -fl
        prv[jj], nxt[es * m + before] = before, jj - es * m
        prv[ii] = -1
        # rates change for the three partons whose momenta changed and for their colour partners
        moved = torch.stack([fi, fk, fj], dim=1)
        around = torch.cat([moved, nxt[moved.reshape(-1)].view(-1, 3), prv[moved.reshape(-1)].view(-1, 3)], dim=1)
        around[:, :3] -= e.unsqueeze(1) * m
        self._update_rates(e, around)
        self.active[e] &= self.cum[e, -1] > 0

    def result(self) -> ShowerState:
        m = int(self.npart.max())
        count = torch.zeros(self.n, dtype=torch.long)
        e = torch.zeros(0, dtype=torch.long)
        rows = torch.zeros(0, len(COLUMNS), dtype=_F64)
        if self.trials:
            e, keep, rows = (torch.cat(parts) for parts in zip(*self.trials))
            e, rows = e[keep], rows[keep]
            count = torch.bincount(e, minlength=self.n)
        t = int(count.max()) if self.n else 0
        # position of each trial in its event's history: its rank among the event's trials, in step order
        order = torch.sort(e, stable=True).indices
        start = torch.cumsum(count, 0) - count
        pos = torch.empty_like(e)
        pos[order] = torch.arange(len(e)) - start[e[order]]
        hist = torch.zeros(self.n * t, len(COLUMNS), dtype=_F64)
        hist.index_copy_(0, e * t + pos, rows)
        return ShowerState(self.P[:, :, :m].permute(1, 2, 0).contiguous(), self.pid[:, :m].clone(), self.npart.clone(),
                           hist.view(self.n, t, len(COLUMNS)), count)


def run_shower(theta: Tensor, settings: ShowerSettings, *, generator: torch.Generator | None = None,
               max_steps: int = 100_000) -> ShowerState:
    r"""Shower one e⁺e⁻ → qq̄ event per row of ``theta (N, 3)`` = (D, F, C) with the batched veto algorithm.

    θ must be checked by the caller (:meth:`~.kernels.Overestimate.check`).

    Returns:
        :class:`ShowerState` with final-state momenta, flavours and the stored trial history.
    """
    veto = _Veto(theta, settings, generator)
    for _ in range(max_steps):
        if not veto.step():
            break
    return veto.result()
