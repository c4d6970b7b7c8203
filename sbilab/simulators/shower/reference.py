r"""A scalar pure-Python implementation of the same shower: the oracle of the batched one.

One event at a time, plain floats and :mod:`random`, the competition of the dipoles written out as
a loop over every colour-connected emitter–spectator pair and kernel at every step, as in
Höche's tutorial shower (arXiv:1411.4085). The physics is that of
:mod:`~sbilab.simulators.shower.engine` (same kernels, overestimates, one-loop coupling, cutoff,
kinematics map and colour treatment); the code shares nothing with it but the constants, and
builds the transverse momentum differently (a spatial cross product and a four-dimensional
Levi-Civita vector instead of projected axes). Each trial is kept as a plain row of :data:`ROW` (every
field its own float); :func:`as_state` packs the rows into the layout of
:data:`~sbilab.simulators.shower.history.COLUMNS`, outside the timed shower; :func:`reference_log_prob` evaluates their
likelihood in plain Python. Tests compare distributions (multiplicity, thrust, y23, first
emissions) and likelihoods with the batched shower.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .engine import ShowerState
from .history import COLUMNS, FIELDS, HISTORY_VERSION, encode
from .kernels import CA, CF, KERNEL_GG, KERNEL_GQ, KERNEL_QQ, NF, TR, RunningCoupling

__all__ = ["ROW", "ReferenceEvent", "reference_shower", "reference_log_prob", "as_state"]

GLUON = 21
ROW = ("t", "z", "y", "phi", "kernel", "emitter", "spectator", "flavour", "emitted", "accepted", "p_hat", "version")
"""Fields of a reference trial row, in order."""


@dataclass
class ReferenceEvent:
    """One showered event: final-state momenta ``[E, px, py, pz]``, PDG ids, and the trial history (rows of :data:`ROW`)."""

    momenta: list[list[float]] = field(default_factory=list)
    pid: list[int] = field(default_factory=list)
    trials: list[list[float]] = field(default_factory=list)


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return a[0] * b[0] - a[1] * b[1] - a[2] * b[2] - a[3] * b[3]


def _det3(m: list[list[float]]) -> float:
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


def _orthogonal(a: list[float], b: list[float], c: list[float]) -> list[float]:
    """A vector Minkowski-orthogonal to a, b, c: the Euclidean 4-d cross product of their lowered forms."""
    rows = [[v[0], -v[1], -v[2], -v[3]] for v in (a, b, c)]
    out = []
    for col in range(4):
        minor = [[r[j] for j in range(4) if j != col] for r in rows]
        out.append((-1) ** col * _det3(minor))
    return out


def _kinematics(pij: list[float], pk: list[float], z: float, omz: float, y: float, phi: float) -> tuple[list[float], ...]:
    m2 = 2.0 * _dot(pij, pk)
    kt = math.sqrt(max(m2 * y * z * omz, 0.0))
    a, b = pij[1:], pk[1:]
    cross = [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
    norm = math.sqrt(sum(v * v for v in cross))
    if norm < 1e-9 * math.sqrt(sum(v * v for v in a) * sum(v * v for v in b)):  # back to back: any axis orthogonal to a
        axis = min(range(3), key=lambda i: abs(a[i]))
        e = [1.0 if i == axis else 0.0 for i in range(3)]
        cross = [a[1] * e[2] - a[2] * e[1], a[2] * e[0] - a[0] * e[2], a[0] * e[1] - a[1] * e[0]]
        norm = math.sqrt(sum(v * v for v in cross))
    n1 = [0.0] + [v / norm for v in cross]
    n2 = _orthogonal(pij, pk, n1)
    n2_norm = math.sqrt(-_dot(n2, n2))
    n2 = [v / n2_norm for v in n2]
    kperp = [kt * (math.cos(phi) * u + math.sin(phi) * v) for u, v in zip(n1, n2)]
    pi = [z * u + omz * y * v + w for u, v, w in zip(pij, pk, kperp)]
    pj = [omz * u + z * y * v - w for u, v, w in zip(pij, pk, kperp)]
    return pi, pj, [(1.0 - y) * v for v in pk]


def _shower_one(theta: Sequence[float], rng: random.Random, *, ecms: float, t0: float, coupling: RunningCoupling,
                high: Sequence[float]) -> ReferenceEvent:
    d, f, c = theta
    soft, flat = 2.0 * CF * high[0], CF * (high[1] + max(high[2], 0.0) / 4.0)
    cos = -2.0 * math.sinh(math.asinh(2.0 - 4.0 * rng.random()) / 3.0)
    sin, phi0 = math.sqrt(max(1.0 - cos * cos, 0.0)), 2.0 * math.pi * rng.random()
    direction = [sin * math.cos(phi0), sin * math.sin(phi0), cos]
    flavour = 1 + min(int(rng.random() * NF), NF - 1)
    e = ecms / 2.0
    p = [[e] + [e * v for v in direction], [e] + [-e * v for v in direction]]
    pid, nxt, prv = [flavour, -flavour], [1, -1], [-1, 0]
    trials: list[list[float]] = []
    t = ecms**2 / 4.0
    while True:
        candidates = []  # (rate, emitter, spectator, kernel, m2, zm, zp)
        for i in range(len(p)):
            for k in (nxt[i], prv[i]):
                if k < 0:
                    continue
                m2 = 2.0 * _dot(p[i], p[k])
                if m2 <= 4.0 * t0:
                    continue
                zm = 2.0 * t0 / (m2 * (1.0 + math.sqrt(1.0 - 4.0 * t0 / m2)))
                zp = 1.0 - zm
                if pid[i] == GLUON:
                    candidates.append((CA * math.log(zp / zm), i, k, KERNEL_GG, m2, zm, zp))
                    candidates.append((NF * 0.5 * TR * (zp - zm), i, k, KERNEL_GQ, m2, zm, zp))
                else:
                    candidates.append((soft * math.log(zp / zm) + flat * (zp - zm), i, k, KERNEL_QQ, m2, zm, zp))
        total = sum(cand[0] for cand in candidates)
        if total <= 0.0:
            break
        log_t = math.log(t / coupling.lambda2) * rng.random() ** (2.0 * math.pi * coupling.b0 / total)
        t = coupling.lambda2 * math.exp(log_t)
        if t <= t0:
            break
        r = rng.random() * total
        for cand in candidates:
            r -= cand[0]
            if r < 0.0:
                break
        _, i, k, kernel, m2, zm, zp = cand
        if kernel == KERNEL_QQ:
            soft_part = soft * math.log(zp / zm)
            use_soft = rng.random() * (soft_part + flat * (zp - zm)) < soft_part
        else:
            use_soft = kernel == KERNEL_GG
        u = rng.random()
        if use_soft:
            omz = zp * (zm / zp) ** u
            z = 1.0 - omz
        else:
            z = zm + (zp - zm) * u
            omz = 1.0 - z
        y = t / (m2 * z * omz)
        if y >= 1.0:
            continue
        if kernel == KERNEL_QQ:
            p_hat = soft / omz + flat
            value = CF * (d * 2.0 * z * (1.0 - y) / (omz + z * y) + f * omz + c * y * z * omz)
        elif kernel == KERNEL_GG:
            p_hat = CA / omz
            value = 0.5 * CA * (2.0 / (omz + z * y) - 2.0 + z * omz)
        else:
            p_hat = NF * 0.5 * TR
            value = NF * 0.5 * TR * (1.0 - 2.0 * z * omz)
        accept = rng.random() < (1.0 - y) * value / p_hat
        phi = 2.0 * math.pi * rng.random()
        quark = 1 + min(int(rng.random() * NF), NF - 1)
        emitted = -quark if kernel == KERNEL_GQ else GLUON
        trials.append([t, z, y, phi, float(kernel), float(i), float(k), float(pid[i]), float(emitted), float(accept), p_hat,
                       float(HISTORY_VERSION)])
        if not accept:
            continue
        pi, pj, pk = _kinematics(p[i], p[k], z, omz, y, phi)
        j = len(p)
        p[i], p[k] = pi, pk
        p.append(pj)
        if kernel == KERNEL_GQ:  # i: quark keeping the colour line; j: antiquark taking the anticolour line
            before = prv[i]
            pid[i] = quark
            pid.append(-quark)
            nxt.append(-1)
            prv.append(before)
            nxt[before] = j
            prv[i] = -1
        else:  # the gluon j sits between i and k on their colour line
            pid.append(GLUON)
            if k == nxt[i]:
                nxt[i] = j
                nxt.append(k)
                prv.append(i)
                prv[k] = j
            else:
                prv[i] = j
                prv.append(k)
                nxt.append(i)
                nxt[k] = j
    return ReferenceEvent(p, pid, trials)


def reference_shower(theta: Sequence[float], n: int, *, seed: int = 0, ecms: float = 91.2, t0: float = 1.0,
                     alpha_s_mz: float = 0.118, high: Sequence[float] = (1.5, 1.5, 1.5)) -> list[ReferenceEvent]:
    r"""Shower ``n`` events at one point ``theta`` = (D, F, C) in pure Python.

    Args:
        seed: Seed of the :class:`random.Random` stream.
        high: The largest (D, F, C) the overestimate covers (as ``PartonShower(high=...)``).
    """
    rng = random.Random(seed)
    coupling = RunningCoupling(alpha_s_mz=alpha_s_mz)
    return [_shower_one(tuple(float(v) for v in theta), rng, ecms=ecms, t0=t0, coupling=coupling, high=high) for _ in range(n)]


def reference_log_prob(event: ReferenceEvent, theta: Sequence[float]) -> float:
    r""":math:`\sum_\text{acc}\log w_\theta + \sum_\text{rej}\log(1-w_\theta)` of one event's trials, in plain Python."""
    d, f, c = (float(v) for v in theta)
    total = 0.0
    for t, z, y, _phi, kernel, _i, _k, _fl, _em, accepted, p_hat, _v in event.trials:
        omz = 1.0 - z
        if int(kernel) == KERNEL_QQ:
            value = CF * (d * 2.0 * z * (1.0 - y) / (omz + z * y) + f * omz + c * y * z * omz)
        elif int(kernel) == KERNEL_GG:
            value = 0.5 * CA * (2.0 / (omz + z * y) - 2.0 + z * omz)
        else:
            value = NF * 0.5 * TR * (1.0 - 2.0 * z * omz)
        w = (1.0 - y) * value / p_hat
        total += math.log(w) if accepted > 0.5 else math.log1p(-w)
    return total


def as_state(events: Sequence[ReferenceEvent]) -> ShowerState:
    """Pad reference events into the tensors of the batched shower (:class:`~.engine.ShowerState`)."""
    n = len(events)
    m = max(len(e.pid) for e in events)
    t = max(len(e.trials) for e in events)
    momenta = torch.zeros(n, m, 4, dtype=torch.float64)
    pid = torch.zeros(n, m, dtype=torch.long)
    history = torch.zeros(n, t, len(COLUMNS), dtype=torch.float64)
    for row, event in enumerate(events):
        momenta[row, :len(event.pid)] = torch.tensor(event.momenta, dtype=torch.float64)
        pid[row, :len(event.pid)] = torch.tensor(event.pid)
        if event.trials:
            trials = torch.tensor(event.trials, dtype=torch.float64)
            values = dict(zip(ROW, trials.unbind(1)))
            code = encode(**{name: values[name] for name in FIELDS})
            history[row, :len(event.trials)] = torch.stack([values[name] for name in COLUMNS[:-1]] + [code], 1)
    return ShowerState(momenta, pid, torch.tensor([len(e.pid) for e in events]), history,
                       torch.tensor([len(e.trials) for e in events]))
