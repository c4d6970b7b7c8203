r"""The checks every unfolding method applies to its inputs, once, at the call that receives them."""

from __future__ import annotations

from ..events import Events
from ..exceptions import InvalidEventsError, ShapeMismatchError
from ..paired import PairedEvents

__all__ = ["check_inputs"]


def _same_kind(a: Events, b: Events, what: str) -> None:
    if a.is_set != b.is_set or a.n_observables != b.n_observables:
        kind = lambda e: f"{'sets (N, M, ' if e.is_set else '(N, '}{e.n_observables})"  # noqa: E731
        raise ShapeMismatchError(f"{what}: the data have observables {kind(b)} but the simulation's detector level has "
                                 f"{kind(a)}; data and simulation must have the same observables.")


def check_inputs(mc: PairedEvents, data: Events, background: Events | None, *, owner: str = "omnifold") -> None:
    """Validate the inputs of an unfolding (named errors at the call that received them).

    Raises:
        InvalidEventsError: inputs that are not (Paired)Events, per-member data weights, all-zero or
            negative-sum weights, data minus background without a positive total.
        ShapeMismatchError: data (or background) and simulation with different observables.
    """
    if not isinstance(mc, PairedEvents):
        raise InvalidEventsError(f"{owner}: mc must be PairedEvents (gen, reco, pass masks, weights); got {type(mc).__name__}.")
    if not isinstance(data, Events):
        raise InvalidEventsError(f"{owner}: data must be Events (e.g. Events.observed(x)); got {type(data).__name__}.")
    _same_kind(mc.reco, data, owner)
    if background is not None:
        if not isinstance(background, Events):
            raise InvalidEventsError(f"{owner}: background must be Events with weights; got {type(background).__name__}.")
        _same_kind(mc.reco, background, f"{owner} (background)")
    for name, events in (("data", data), ("background", background)):
        if events is not None and events.weights is not None and events.weights.dim() != 1:
            raise InvalidEventsError(f"{owner}: {name} weights must be (N,); replicas are set with Replicas(...).")
    w = mc.weights_or_ones().double()
    for what, sel in (("reco-passing", mc.pass_reco), ("gen-passing", mc.pass_gen)):
        if not bool(sel.any()) or float(w[sel].sum()) <= 0:
            raise InvalidEventsError(f"{owner}: the simulation's {what} events have total weight {float(w[sel].sum()):g}; "
                                     "all-zero or negative-sum weights describe no distribution.")
    total = float(data.weights_or_ones().double().sum())
    if background is not None:
        total -= float(background.weights_or_ones().double().sum())
    if len(data) == 0 or total <= 0:
        raise InvalidEventsError(f"{owner}: the data{' minus background' if background is not None else ''} have total weight "
                                 f"{total:g}; there is nothing to unfold.")
