r"""The batched veto algorithm: :data:`TRIALS` successive trials per still-active event per step, all events at once.

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

Rates change only when a trial is accepted, so each step draws :data:`TRIALS` successive trials
per event at once (scales :math:`\ln(t_j/\Lambda^2) = \ln(t/\Lambda^2)\prod_{l \le j} u_l^{2\pi b_0/R}`,
each with its own candidate, z, accept and φ draws) and keeps them up to and including the first
accepted one; the later ones are discarded unused. This is the same sequential veto algorithm
(the discarded trials would have been drawn after the emission, from other rates), with about
four times fewer steps than one trial per step.

The colour state is a doubly linked list per event: ``nxt[i]`` is the parton whose anticolour
carries i's colour, ``prv[i]`` the one whose colour carries i's anticolour (-1: none). e⁺e⁻ → qq̄
never forms closed gluon loops, so each partner is a distinct dipole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

from ...exceptions import SamplingError
from .history import COLUMNS, FIELDS, HISTORY_VERSION, encode
from .kernels import CA, CF, NF, TR, Overestimate, RunningCoupling
from .kinematics import dipole_map, hard_process, mdot, z_minus

__all__ = ["ShowerSettings", "ShowerState", "run_shower", "run_showers", "hard_process", "dipole_map", "mdot", "z_minus"]

_F64 = torch.float64
GLUON = 21
COMPACT = 0.7
"""Live rows are compacted when fewer than this fraction of them still shower."""
TRIALS = 6
"""Successive veto-algorithm trials drawn per live event and step (module docstring)."""
_COMPONENTS = ("p0", "p1", "p2", "p3")
_DIPOLE = ("m2", "zm", "L", "r0", "rt")
_OUTPUT = ("orig", *_COMPONENTS, "pid", "npart", "count")


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


class _Veto:
    """State of the batched veto algorithm over the still-showering events (module docstring).

    Per-event state is kept for the *live* rows only (``orig`` maps a row to its event) and is
    compacted when fewer than :data:`COMPACT` of the rows still shower. Every table is a
    contiguous tensor gathered with flat indices (one ``index_select`` per quantity): momenta
    component by component and flavours ``(B, M)`` at ``row * M + slot``; per dipole entry
    (emitter slot, side) ``(B, 2M)`` at ``row * 2M + 2 slot + side``: the spectator slot ``part``,
    :math:`m^2`, :math:`z_-`, :math:`L = \\ln(z_+/z_-)`, the rate ``r0`` of the emitter's first
    kernel and the entry's total rate ``rt``; ``cum (B, 2M + 1)`` is the cumulative total with a
    leading zero. Each step appends its stored trials to ``log`` as (event, position, rows);
    :func:`_assemble` pads them into the ``(N, T, K)`` history once, after the last step.
    """

    def __init__(self, theta: Tensor, settings: ShowerSettings, generator: torch.Generator | None, trials: int = TRIALS) -> None:
        s, over = settings, settings.overestimate
        self.s, self.gen, self.n, self.k = s, generator, theta.shape[0], int(trials)
        self.ell0 = math.log(s.t0 / s.coupling.lambda2)
        self.k_scale = 2.0 * math.pi * s.coupling.b0
        self.a_soft = torch.tensor([over.soft, CA, 0.0], dtype=_F64)  # P-hat(z) = a_s/(1-z) + a_f per kernel code
        self.a_flat = torch.tensor([over.flat, 0.0, NF * 0.5 * TR], dtype=_F64)
        n, m = self.n, 8
        self.m = m
        th = theta.to(_F64)
        momenta, pid = hard_process(n, s.ecms, generator)
        st: dict[str, Tensor] = {"orig": torch.arange(n)}
        for c, key in enumerate(_COMPONENTS):
            st[key] = torch.cat([momenta[:, :, c], torch.zeros(n, m - 2, dtype=_F64)], 1)
        st["pid"] = torch.cat([pid.to(_F64), torch.zeros(n, m - 2, dtype=_F64)], 1)
        st["part"] = torch.full((n, 2 * m), -1, dtype=torch.long)
        st["part"][:, 0], st["part"][:, 3] = 1, 0  # quark (slot 0) colour -> antiquark (slot 1) anticolour
        for key in _DIPOLE:
            st[key] = torch.zeros(n, 2 * m, dtype=_F64)
        st["cum"] = torch.zeros(n, 2 * m + 1, dtype=_F64)
        st["npart"], st["count"] = torch.full((n,), 2, dtype=torch.long), torch.zeros(n, dtype=torch.long)
        st["live"] = torch.ones(n, dtype=torch.bool)
        st["ell"] = torch.full((n,), math.log(s.t_start / s.coupling.lambda2), dtype=_F64)
        st["kappa"] = torch.zeros(n, dtype=_F64)
        st["cD"], st["cF"], st["cC"] = 2.0 * CF * th[:, 0], CF * th[:, 1], CF * th[:, 2]
        self.state = st
        self._index()
        self._refresh(torch.arange(n), torch.zeros(n, 1, dtype=torch.long), torch.zeros(n, 1, dtype=torch.long))
        self.finished: list[dict[str, Tensor]] = []
        self.log: list[tuple[Tensor, Tensor, Tensor]] = []  # stored trials per step: (event, position, (S, K) rows)
        self.ks = torch.arange(self.k)
        self.np_bound = 2  # upper bound of the live rows' largest parton count

    def _index(self) -> None:
        """Row bases of the flat tables for the current rows and capacity."""
        rows, m = torch.arange(self.state["orig"].numel()), self.m
        self.base_m, self.base_d, self.base_c = rows * m, rows * (2 * m), rows * (2 * m + 1)

    # ------------------------------------------------------------------ layout
    def _compact(self) -> None:
        """Keep the live rows only; the finished rows' final state goes to ``finished``."""
        st = self.state
        done = torch.nonzero(~st["live"]).squeeze(1)
        if done.numel():
            self.finished.append({key: st[key].index_select(0, done) for key in _OUTPUT})
        keep = torch.nonzero(st["live"]).squeeze(1)
        for key, value in st.items():
            st[key] = value.index_select(0, keep)
        self._index()

    def _grow(self) -> None:
        """Double the parton capacity ``M``.

        Raises:
            SamplingError: an event would hold more partons than the history's slot field can number.
        """
        st, m = self.state, self.m
        if 2 * m > 2 ** FIELDS["emitter"][1]:
            raise SamplingError(
                f"a shower event reached {m} partons, the most the history's {FIELDS['emitter'][1]}-bit emitter field can "
                "number; raise the cutoff t0 (or lower the centre-of-mass energy) of the shower."
            )
        b = st["orig"].numel()
        for key in _COMPONENTS + ("pid",):
            st[key] = torch.cat([st[key], st[key].new_zeros(b, m)], 1)
        st["part"] = torch.cat([st["part"], st["part"].new_full((b, 2 * m), -1)], 1)
        for key in _DIPOLE:
            st[key] = torch.cat([st[key], st[key].new_zeros(b, 2 * m)], 1)
        st["cum"] = torch.cat([st["cum"], st["cum"][:, -1:].expand(b, 2 * m)], 1)
        self.m = 2 * m
        self._index()

    # ------------------------------------------------------------------ rates
    def _refresh(self, rows: Tensor, x: Tensor, side: Tensor) -> None:
        """Recompute the dipoles from slot ``x`` on ``side`` to its partner, ``x, side (R, P)``, of ``rows (R,)`` (unique).

        Both entries of each dipole are written ((x, side) and (partner, 1 - side)); a slot without
        a partner on that side gets zero rate. Then ``cum`` and ``kappa`` of the rows.
        """
        st, t0, over = self.state, self.s.t0, self.s.overestimate
        bm, bd = self.base_m.index_select(0, rows).unsqueeze(1), self.base_d.index_select(0, rows).unsqueeze(1)
        flat_x = (bd + 2 * x + side).reshape(-1)
        partner = st["part"].view(-1).index_select(0, flat_x).view_as(x)
        has = partner >= 0
        other = partner.clamp(min=0)
        fx, fp = (bm + x).reshape(-1), (bm + other).reshape(-1)
        flat_p = torch.where(has, bd + 2 * other + 1 - side, bd + 2 * x + side).reshape(-1)
        has = has.reshape(-1)
        e, s_ = (torch.stack([st[key].view(-1).index_select(0, idx) for key in _COMPONENTS]) for idx in (fx, fp))
        m2 = 2.0 * (e[0] * s_[0] - e[1] * s_[1] - e[2] * s_[2] - e[3] * s_[3])
        ok = has & (m2 > 4.0 * t0)
        m2 = m2 * ok  # 0 for no dipole: every trial on it has y = inf and is vetoed
        zm = torch.where(ok, z_minus(m2.clamp(min=8.0 * t0), t0), 0.25)
        width = 1.0 - 2.0 * zm
        log_range = torch.log((1.0 - zm) / zm)
        gluon = torch.cat([st["pid"].view(-1).index_select(0, fx), st["pid"].view(-1).index_select(0, fp)]) == GLUON
        ok2, width2, log2 = ok.repeat(2), width.repeat(2), log_range.repeat(2)
        gluon &= ok2
        r0 = (CA * log2) * gluon + (over.soft * log2 + over.flat * width2) * (ok2 & ~gluon)
        rt = r0 + (NF * 0.5 * TR * width2) * gluon
        flat = torch.cat([flat_x, flat_p])
        for key, value in zip(_DIPOLE, (m2.repeat(2), zm.repeat(2), log2, r0, rt)):
            st[key].view(-1).index_copy_(0, flat, value)
        total = st["rt"].index_select(0, rows).T.cumsum(0)  # (2M, R): cumulative along contiguous rows
        cum = torch.cat([torch.zeros(1, rows.numel(), dtype=_F64), total]).T
        st["cum"].index_copy_(0, rows, cum)
        st["kappa"].index_copy_(0, rows, self.k_scale / total[-1])

    # ------------------------------------------------------------------ one step
    def step(self) -> bool:
        """``k`` successive trials for every live event, up to its first accepted one; returns whether any event still showers."""
        st, s, m, kk = self.state, self.s, self.m, self.k
        b = st["orig"].numel()
        u = torch.rand(5, b, kk, generator=self.gen, dtype=_F64)
        # ln(t_j/Λ²) = ln(t/Λ²) Π_{l<=j} u_l^(2π b0/R): the rates do not change until a trial is accepted
        ell = u[0].log_().cumsum_(1).mul_(st["kappa"].unsqueeze(1)).exp_().mul_(st["ell"].unsqueeze(1))
        alive = (ell > self.ell0).logical_and_(st["live"].unsqueeze(1))
        cum = st["cum"]
        r = u[1].mul_(cum[:, -1:])
        c = torch.searchsorted(cum, r, right=True).sub_(1).clamp_(0, 2 * m - 1)
        v = r.sub_(cum.gather(1, c))  # uniform on [0, rate of c), recycled below
        flat = (self.base_d.unsqueeze(1) + c).view(-1)
        m2, zm, log_range, r0 = (st[key].view(-1).index_select(0, flat).view(b, kk) for key in _DIPOLE[:4])
        k = st["part"].view(-1).index_select(0, flat).view(b, kk)
        i = c >> 1
        flavour = st["pid"].view(-1).index_select(0, (self.base_m.unsqueeze(1) + i).view(-1)).view(b, kk)
        gluon = flavour == GLUON
        second = v >= r0  # g -> q qbar (never for quarks: their r0 is the whole rate)
        v -= r0 * second
        ktype = gluon.long() + second
        a_s, a_f = self.a_soft[ktype], self.a_flat[ktype]
        soft = v < a_s * log_range
        u2 = u[2]
        omz_soft = torch.exp(-u2 * log_range).mul_(1.0 - zm)  # z_+ (z_-/z_+)^u
        z_flat = torch.addcmul(zm, 1.0 - 2.0 * zm, u2)
        omz = torch.where(soft, omz_soft, 1.0 - z_flat)
        z = torch.where(soft, 1.0 - omz_soft, z_flat)
        t = torch.exp(ell).mul_(s.coupling.lambda2)
        zomz = z * omz
        y = t / (m2 * zomz)
        omy = 1.0 - y
        p_hat = a_s / omz + a_f
        soft_term = z * omy / (omz + z * y)  # z(1-y)/(1-z(1-y))
        p_qq = torch.addcmul(torch.addcmul(st["cD"].unsqueeze(1) * soft_term, st["cF"].unsqueeze(1), omz), st["cC"].unsqueeze(1), y * zomz)
        p_gg = torch.addcmul(CA * soft_term, zomz, self.half_ca)
        p_gq = torch.addcmul(self.nf_tr_half, zomz, self.minus_nf_tr)
        value = torch.where(gluon, torch.where(second, p_gq, p_gg), p_qq)
        inside = (y < 1.0).logical_and_(alive)
        accept = (u[3] * p_hat < omy * value).logical_and_(inside)
        first = accept.to(torch.uint8).argmax(1)  # the first accepted trial ends the row's step
        hit = accept.any(1)
        last = torch.where(hit, first, kk - 1)
        stored = inside.logical_and_(self.ks <= last.unsqueeze(1))
        st["ell"] = ell.gather(1, last.unsqueeze(1)).squeeze(1)
        go = st["live"].logical_and_(st["ell"] > self.ell0)
        q = torch.floor(u[4] * NF)
        phi = (u[4] * NF - q).mul_(2.0 * math.pi)
        emitted = torch.where(second, -1.0 - q, self.gluon_code)
        sel = torch.nonzero(stored.view(-1)).squeeze(1)
        if sel.numel():
            position = (stored.cumsum(1) - 1).add_(st["count"].unsqueeze(1)).view(-1).index_select(0, sel)
            pick = [x.reshape(-1).index_select(0, sel) for x in (t, z, y, phi, p_hat, accept, ktype, i, k, flavour, emitted)]
            code = encode(check=False, version=HISTORY_VERSION, **dict(zip(FIELDS, pick[5:])))
            rows = torch.stack(pick[:5] + [code], 1)
            self.log.append((st["orig"].index_select(0, torch.div(sel, kk, rounding_mode="floor")), position, rows))
            st["count"] += stored.sum(1)
        a = torch.nonzero(hit).squeeze(1)
        if a.numel():
            if self.np_bound >= m:
                if int(st["npart"].max()) >= self.m:
                    self._grow()
                self.np_bound = int(st["npart"].max())
            fa = a * kk + first.index_select(0, a)
            self._emit(a, *(x.reshape(-1).index_select(0, fa) for x in (i, k, c & 1, second, emitted, flavour, z, omz, y, phi)))
            self.np_bound += 1
        live = int(go.sum())
        if live and live < COMPACT * b:
            self._compact()
        return live > 0

    half_ca = torch.tensor(0.5 * CA, dtype=_F64)
    nf_tr_half = torch.tensor(NF * 0.5 * TR, dtype=_F64)
    minus_nf_tr = torch.tensor(-NF * TR, dtype=_F64)
    gluon_code = torch.tensor(float(GLUON), dtype=_F64)

    def _emit(self, a: Tensor, i: Tensor, k: Tensor, side: Tensor, split: Tensor, emitted: Tensor, flavour: Tensor,
              z: Tensor, omz: Tensor, y: Tensor, phi: Tensor) -> None:
        """Apply the accepted splittings of rows ``a (A,)``: momenta, flavours, colour partners, rates."""
        st = self.state
        j = st["npart"].index_select(0, a)
        bm, bd = self.base_m.index_select(0, a), self.base_d.index_select(0, a)
        fi, fk, fj = bm + i, bm + k, bm + j
        pij, pk = (torch.stack([st[key].view(-1).index_select(0, idx) for key in _COMPONENTS], 1) for idx in (fi, fk))
        pi, pj, pk = dipole_map(pij, pk, z, omz, y, phi)
        where = torch.cat([fi, fk, fj])
        new = torch.cat([pi, pk, pj]).T
        for c, key in enumerate(_COMPONENTS):
            st[key].view(-1).index_copy_(0, where, new[c])
        st["pid"].view(-1).index_copy_(0, torch.cat([fj, fi]), torch.cat([emitted, torch.where(split, -emitted, flavour)]))
        st["npart"].index_add_(0, a, torch.ones_like(a))
        part = st["part"].view(-1)
        before = part.index_select(0, bd + 2 * i + 1).clamp(min=0)  # anticolour partner of a splitting gluon
        other = 1 - side
        one, zero, none = torch.ones_like(side), torch.zeros_like(side), torch.full_like(side, -1)
        # gluon j inserted between i and k on side s: (i,s)<-j, (j,1-s)<-i, (j,s)<-k, (k,1-s)<-j
        # g -> q qbar (i quark, j antiquark):         (i,1)<-none, (j,1)<-before, (j,0)<-none, (before,0)<-j
        entries = [(i, torch.where(split, one, side)), (j, torch.where(split, one, other)), (j, torch.where(split, zero, side)),
                   (torch.where(split, before, k), torch.where(split, zero, other))]
        values = [torch.where(split, none, j), torch.where(split, before, i), torch.where(split, none, k), j]
        part.index_copy_(0, torch.cat([bd + 2 * sl + sd for sl, sd in entries]), torch.cat(values))
        # dipoles whose kinematics or partners changed (module docstring): insertion (i,s) (j,s) (i,1-s) (k,s) (j,1-s);
        # splitting (i,0) (j,1) (k,0) (k,1) (i,1)
        x = torch.stack([i, j, torch.where(split, k, i), k, torch.where(split, i, j)], 1)
        sides = torch.stack([torch.where(split, zero, side), torch.where(split, one, side), torch.where(split, zero, other),
                             torch.where(split, one, side), torch.where(split, one, other)], 1)
        self._refresh(a, x, sides)


    def finish(self) -> None:
        """Move the rows still held to ``finished`` (the final state is complete)."""
        self.finished.append({key: self.state[key] for key in _OUTPUT})
        self.state = {}


def _assemble(vetoes: list[_Veto]) -> ShowerState:
    """One :class:`ShowerState` of the finished showers ``vetoes`` (their events in order), padded once."""
    offsets, n = [], 0
    for veto in vetoes:
        offsets.append(n)
        n += veto.n
    parts = [(off, f) for off, veto in zip(offsets, vetoes) for f in veto.finished]
    events = torch.cat([off + f["orig"] for off, f in parts]) if parts else torch.zeros(0, dtype=torch.long)
    npart = torch.zeros(n, dtype=torch.long).index_copy_(0, events, torch.cat([f["npart"] for _, f in parts]))
    count = torch.zeros(n, dtype=torch.long).index_copy_(0, events, torch.cat([f["count"] for _, f in parts]))
    width = int(npart.max()) if n else 2
    momenta = torch.zeros(n, width, 4, dtype=_F64)
    pid = torch.zeros(n, width, dtype=torch.long)
    for off, f in parts:
        w = min(width, f["pid"].shape[1])
        momenta[off + f["orig"], :w] = torch.stack([f[key][:, :w] for key in _COMPONENTS], 2)
        pid[off + f["orig"], :w] = f["pid"][:, :w].long()
    t_max = int(count.max()) if n else 0
    history = torch.zeros(n * t_max, len(COLUMNS), dtype=_F64)
    for off, veto in zip(offsets, vetoes):
        for event, position, rows in veto.log:
            history.index_copy_(0, (event + off) * t_max + position, rows)
        veto.log = []
    return ShowerState(momenta, pid, npart, history.view(n, t_max, len(COLUMNS)), count)


def run_showers(thetas: Iterable[Tensor], settings: ShowerSettings, *, generator: torch.Generator | None = None,
                max_steps: int = 100_000) -> ShowerState:
    r"""Shower the chunks ``thetas`` (each ``(N_c, 3)`` = (D, F, C), one event per row) one after the other.

    Returns one :class:`ShowerState` of all events in order, padded once to the largest parton
    and trial counts of all chunks (no per-chunk padded copies). θ must be checked by the caller
    (:meth:`~.kernels.Overestimate.check`).
    """
    vetoes = []
    for theta in thetas:
        veto = _Veto(theta, settings, generator)
        for _ in range(max_steps):
            if not veto.step():
                break
        veto.finish()
        vetoes.append(veto)
    return _assemble(vetoes)


def run_shower(theta: Tensor, settings: ShowerSettings, *, generator: torch.Generator | None = None,
               max_steps: int = 100_000) -> ShowerState:
    r"""Shower one e⁺e⁻ → qq̄ event per row of ``theta (N, 3)`` = (D, F, C) with the batched veto algorithm.

    θ must be checked by the caller (:meth:`~.kernels.Overestimate.check`).

    Returns:
        :class:`ShowerState` with final-state momenta, flavours and the stored trial history.
    """
    return run_showers([theta], settings, generator=generator, max_steps=max_steps)
