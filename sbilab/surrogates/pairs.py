r"""Paired simulation as training views: the one place where (truth, reco, pass) becomes :class:`Events`.

A stage surrogate learns :math:`q(\mathrm{reco}\mid \mathrm{truth}[,\theta])` from *paired*
simulation: every row holds the truth-level values of an event, its reconstructed values and
whether it passed the selection. The core trains on :class:`~sbilab.events.Events` whose
context is ``x`` and whose target is a named field, so

==========================  ====================================================  ==================
view                        Events                                                 used by
==========================  ====================================================  ==================
:func:`stage_events`        ``x = [truth, θ]`` (passing rows), ``latent = reco``   ConditionalDensity
:func:`efficiency_events`   ``x = [truth, θ]`` (all rows), ``label = pass``        Classifier
:func:`simulator_events`    ``x = θ``, ``latent = x``                              ConditionalDensity
:func:`stage_features`      ``[truth, θ, reco]`` rows                              two-sample tests,
                                                                                    refinement
==========================  ====================================================  ==================

Shapes: ``N`` events, ``L`` truth variables, ``D`` reco observables, ``P`` parameters.
Every function here checks that the paired arrays have one row per event. The core's paired
event type, :class:`~sbilab.paired.PairedEvents` (``gen`` = truth, ``reco``, ``pass_reco``), converts
to and from these arrays with :func:`paired_arrays` and :func:`to_paired_events`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..events import Events
from ..exceptions import InvalidEventsError, ShapeMismatchError
from ..paired import PairedEvents

__all__ = ["check_pairs", "stage_context", "stage_events", "efficiency_events", "simulator_events", "stage_features",
           "paired_arrays", "to_paired_events"]


def _matrix(value: Any, name: str) -> Tensor:
    t = torch.as_tensor(value)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.dim() == 1:
        t = t.reshape(-1, 1)
    if t.dim() != 2:
        raise ShapeMismatchError(f"{name} has shape {tuple(t.shape)}; it must be (N, columns) (or (N,) for one column).")
    return t


def check_pairs(truth: Any, reco: Any, passed: Any = None, theta: Any = None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Validated paired arrays: ``truth (N, L)``, ``reco (N, D)``, ``passed (N,)`` bool, ``theta (N, P)`` or ``None``.

    Args:
        truth: Truth-level values, ``(N, L)`` (``(N,)`` for one variable).
        reco: Reconstructed values of the same events, ``(N, D)``; rows that failed the
            selection may hold any finite placeholder.
        passed: Whether each event passed the selection, ``(N,)`` bool (default: all passed).
        theta: Parameters of each event, ``(N, P)`` or ``(P,)`` for all, or ``None``.

    Raises:
        InvalidEventsError: the arrays differ in length, ``passed`` is not boolean/0-1, or
            the truth (or a passing reco row) holds NaN/inf.
        ShapeMismatchError: an array is not 1-D or 2-D.
    """
    t, r = _matrix(truth, "truth"), _matrix(reco, "reco")
    if t.shape[0] != r.shape[0]:
        raise InvalidEventsError(
            f"paired data: truth has {t.shape[0]} rows but reco has {r.shape[0]}; each truth row pairs with the reco row "
            "of the same event (keep failed events in both, marked by passed=False)."
        )
    n = t.shape[0]
    if passed is None:
        p = torch.ones(n, dtype=torch.bool)
    else:
        p = torch.as_tensor(passed).reshape(-1)
        if p.shape[0] != n:
            raise InvalidEventsError(f"paired data: passed has {p.shape[0]} entries for {n} events; give one flag per event.")
        if p.dtype != torch.bool:
            if not bool(((p == 0) | (p == 1)).all()):
                raise InvalidEventsError("paired data: passed must be boolean (or 0/1).")
            p = p.bool()
    th = None
    if theta is not None:
        th = torch.as_tensor(theta, dtype=t.dtype)
        th = th.reshape(1, -1).expand(n, -1) if th.dim() <= 1 else th
        if th.dim() != 2 or th.shape[0] != n:
            raise InvalidEventsError(f"paired data: theta has shape {tuple(th.shape)} for {n} events; it must be (N, P) or (P,).")
    if not bool(torch.isfinite(t).all()):
        raise InvalidEventsError("paired data: truth holds NaN or inf values; every event needs a finite truth.")
    if not bool(torch.isfinite(r[p]).all()):
        raise InvalidEventsError("paired data: reco holds NaN or inf values in rows that passed the selection.")
    return t, r, p, th


def stage_context(truth: Tensor, theta: Tensor | None) -> Tensor:
    """The conditioning of a stage, ``[truth, θ]``, ``(N, L + P)`` (``truth`` alone without θ)."""
    return truth if theta is None else torch.cat([truth, theta.to(truth.dtype)], dim=1)


def stage_events(truth: Any, reco: Any, passed: Any = None, theta: Any = None, *, weights: Any = None) -> Events:
    r"""Training view of :math:`q(\mathrm{reco}\mid\mathrm{truth}[,\theta])`: passing events, context ``x = [truth, θ]``, target ``latent = reco``."""
    t, r, p, th = check_pairs(truth, reco, passed, theta)
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.get_default_dtype()).reshape(-1)[p]
    if not bool(p.any()):
        raise InvalidEventsError("paired data: no event passed the selection; a stage density needs passing events.")
    dtype = torch.get_default_dtype()  # the dtype networks are built in
    x = stage_context(t, th)[p].to(dtype)
    return Events(x=x, theta=x.new_zeros(x.shape[0], 0), latent=r[p].to(dtype), weights=w)


def efficiency_events(truth: Any, passed: Any, theta: Any = None, *, weights: Any = None) -> Events:
    r"""Training view of the efficiency :math:`P(\mathrm{pass}\mid\mathrm{truth}[,\theta])`: ``x = [truth, θ]``, ``label = passed``."""
    t = _matrix(truth, "truth")
    _, _, p, th = check_pairs(t, t, passed, theta)
    x = stage_context(t, th).to(torch.get_default_dtype())
    w = None if weights is None else torch.as_tensor(weights, dtype=x.dtype).reshape(-1)
    return Events(x=x, theta=x.new_zeros(x.shape[0], 0), label=p.to(x.dtype), weights=w)


def simulator_events(events: Events) -> Events:
    r"""Training view of a whole simulator :math:`q(x\mid\theta)`: context ``x = θ``, target ``latent = x``.

    Raises:
        InvalidEventsError: the events carry no parameters (``theta`` of width 0) or are particle sets.
    """
    if events.n_parameters == 0:
        raise InvalidEventsError("simulator_events: the events have no theta; a surrogate of p(x|θ) needs the θ of every event.")
    if events.is_set:
        raise InvalidEventsError("simulator_events: x is a particle set; a simulator surrogate models vector observables (N, D).")
    dtype = torch.get_default_dtype()
    theta = events.theta.to(dtype)
    weights = None if events.weights is None else events.weights.to(dtype)
    return Events(x=theta, theta=theta.new_zeros(len(events), 0), latent=events.x.to(dtype), weights=weights)


def stage_features(truth: Any, reco: Any, theta: Any = None) -> Tensor:
    r"""Rows ``[truth, θ, reco]``, ``(N, L + P + D)``: what a classifier compares between a stage and its surrogate.

    Because the truth (and θ) enter as inputs, a classifier of these rows tests the conditional
    :math:`p(\mathrm{reco}\mid\mathrm{truth})` *and* the truth distribution of accepted events
    (where an efficiency model shows up).
    """
    t, r, _, th = check_pairs(truth, reco, None, theta)
    return torch.cat([stage_context(t, th), r.to(t.dtype)], dim=1)


def paired_arrays(pairs: PairedEvents) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    r"""The arrays of a stage's paired simulation held in the core's :class:`~sbilab.paired.PairedEvents`.

    ``gen`` is the truth level, ``reco`` the stage's output, ``pass_reco`` the stage's selection;
    θ is ``gen.theta`` (``None`` when it has no columns).

    Returns:
        ``truth (N, L)``, ``reco (N, D)``, ``passed (N,)`` bool, ``theta (N, P)`` or ``None``, checked by :func:`check_pairs`.

    Raises:
        InvalidEventsError: ``pairs`` is not a PairedEvents; a level is a particle set; some events fail the
            gen-level selection (fakes: a stage maps every truth event, so there are none); the pairs carry
            weights other than one (a stage surrogate trains on unweighted simulation); gen and reco θ differ.

    Example:
        >>> pairs = to_paired_events(torch.tensor([[1.0], [2.0]]), torch.tensor([[1.5], [0.0]]), torch.tensor([True, False]))
        >>> [a.tolist() if a is not None else None for a in paired_arrays(pairs)]
        [[[1.0], [2.0]], [[1.5], [0.0]], [True, False], None]
    """
    if not isinstance(pairs, PairedEvents):
        raise InvalidEventsError(f"paired_arrays: expected PairedEvents, got {type(pairs).__name__}; "
                                 "give the arrays (truth, reco, passed) to check_pairs instead.")
    if pairs.gen.is_set or pairs.reco.is_set:
        raise InvalidEventsError("paired_arrays: a level holds particle sets; a stage surrogate models vectors (N, L) -> (N, D).")
    fakes = int((~pairs.pass_gen).sum())
    if fakes:
        raise InvalidEventsError(f"paired_arrays: {fakes} of {len(pairs)} events fail the gen-level selection (fakes); "
                                 "a stage is simulated from every truth event, so keep pass_gen all true.")
    if pairs.weights is not None and not bool((pairs.weights == 1).all()):
        raise InvalidEventsError("paired_arrays: the pairs carry event weights; a stage surrogate trains on unweighted "
                                 "paired simulation (unweight them, or drop the weights if they are a normalisation).")
    theta = pairs.gen.theta if pairs.gen.n_parameters else None
    if theta is not None and pairs.reco.n_parameters and not torch.equal(pairs.reco.theta, theta):
        raise InvalidEventsError("paired_arrays: gen.theta and reco.theta differ; the two levels of an event share its θ.")
    return check_pairs(pairs.gen.x, pairs.reco.x, pairs.pass_reco, theta)


def to_paired_events(truth: Any, reco: Any, passed: Any = None, theta: Any = None) -> PairedEvents:
    """Paired arrays (checked by :func:`check_pairs`) as :class:`~sbilab.paired.PairedEvents`: ``gen`` = truth
    (with ``theta``, if given), ``reco`` (with the same θ), ``pass_reco`` = ``passed``."""
    t, r, p, th = check_pairs(truth, reco, passed, theta)
    r = torch.where(p[:, None], r, torch.zeros((), dtype=r.dtype))  # failed rows: finite placeholders
    if th is None:
        gen, rec = Events.observed(t), Events.observed(r)
    else:
        gen, rec = Events(x=t, theta=th.to(t.dtype)), Events(x=r, theta=th.to(r.dtype))
    return PairedEvents(gen, rec, pass_reco=p)
