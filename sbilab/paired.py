r"""Two levels of the same events: :class:`PairedEvents`.

Unfolding relates the generator level of an event to its detector level, the matrix-element
method the parton level to the reconstructed one. Each level is an ordinary
:class:`~sbilab.events.Events` (vectors or padded sets, with their own masks, spectators, ...);
:class:`PairedEvents` ties two of them row by row and records which selection each event passes:

=================  ==============  =====================================================================
field              shape           meaning
=================  ==============  =====================================================================
``gen``            Events, ``N``   the lower level: generator (truth) or parton level
``reco``           Events, ``N``   the upper level: detector (reconstructed) level
``pass_gen``       ``(N,)`` bool   the event passes the gen-level selection (default: all)
``pass_reco``      ``(N,)`` bool   the event passes the reco-level selection (default: all)
``weights``        ``(N,)``        one weight per event, shared by both levels (default: ones)
=================  ==============  =====================================================================

An event passing both selections is *matched*; passing gen only, a *miss* (inefficiency);
passing reco only, a *fake*; passing neither is an error (it carries no information). The
values of a level an event fails are placeholders (any finite numbers, or an all-false set
mask); :meth:`PairedEvents.from_arrays` accepts NaN there and zero-fills it. Weights live on
the pair only: the levels must not carry weights of their own.

How the applications compose it (sketch; ``Classifier``, ``ConditionalDensity``,
``classifier_weights`` and ``fit`` are the core's)::

    # Unfolding (OmniFold, 1911.09107): MC pairs with pass masks and weights w0, data at reco.
    mc = PairedEvents(gen=Events.observed(z), reco=Events.observed(x, mask=x_mask),
                      pass_gen=pg, pass_reco=pr, weights=w0)
    data = Events.observed(x_data, mask=data_mask)
    nu = torch.ones(len(mc))                          # pulled weights, one per MC event
    for _ in range(iterations):                       # train(a, b): fit(Classifier(...), bce, a vs b)
        sim = mc.with_weights(w0 * nu).level("reco")  # reco-passing events only
        omega = nu.clone()                            # step 1: data vs simulation at reco level
        omega[mc.pass_reco] *= classifier_weights(train(data, sim), sim)   # misses keep nu
        pushed, prior = (mc.with_weights(w0 * w).level("gen") for w in (omega, nu))
        nu = nu.clone()                               # step 2: omega vs nu at gen level
        nu[mc.pass_gen] *= classifier_weights(train(pushed, prior), prior)  # fakes keep nu
    # Generative (cINN) unfolding: q(gen | reco) on matched events; misses/fakes by classifiers.
    fit(q := ConditionalDensity(...), loss_on_latent, mc.conditional(target="gen"))

    # Matrix-element method (issue 13): (reco, parton) pairs from any simulator.
    pairs = PairedEvents(gen=Events(x=parton, theta=alpha), reco=Events(x=reco, theta=alpha),
                         pass_reco=accepted)
    transfer = pairs.conditional(target="reco")    # p(reco | parton): latent = reco, x = parton
    proposal = pairs.conditional(target="gen")     # q(parton | reco): latent = parton, x = reco
    acceptance_labels = pairs.pass_reco            # an acceptance classifier on pairs.gen.x

    # ABCD / DisCo (issue 15): the mass rides along as a spectator, never as an input.
    ev = Events(x=features, theta=torch.zeros(n, 0), label=is_signal, spectator=mass[:, None])
    fit(clf, bce_plus_dcor2(lam), ev)              # the loss reads batch.spectator for dCor²
    regions = abcd_regions(score=clf(ev.x), mass=ev.spectator[:, 0])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from .events import TENSOR_FIELDS, Events, split_indices
from .exceptions import InvalidEventsError

__all__ = ["PairedEvents", "LEVELS"]

LEVELS = ("gen", "reco")
Level = Literal["gen", "reco"]
_PAIR_FIELDS = ("pass_gen", "pass_reco", "weights")


def _pass_mask(name: str, value: Any, n: int, device: torch.device) -> Tensor:
    if value is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    t = torch.as_tensor(value, device=device)
    if t.dim() != 1 or t.shape[0] != n:
        raise InvalidEventsError(f"PairedEvents.{name} has shape {tuple(t.shape)}; it must be ({n},), one flag per event.")
    if t.dtype != torch.bool:
        if not bool(((t == 0) | (t == 1)).all()):
            raise InvalidEventsError(f"PairedEvents.{name} must be boolean (or 0/1); it holds other values.")
        t = t.bool()
    return t


def _rows_text(rows: Tensor) -> str:
    first = rows[:5].tolist()
    return ", ".join(map(str, first)) + (", ..." if len(rows) > 5 else "")


@dataclass(frozen=True, eq=False)
class PairedEvents:
    r"""Two levels of the same ``N`` events with their selections and weights (see the module docs).

    Args:
        gen: Lower level (generator/parton), ``N`` events.
        reco: Upper level (detector/reco), ``N`` events; may be of another kind than ``gen``
            (e.g. particle sets at reco, vectors at gen).
        pass_gen: Gen-level selection, ``(N,)`` bool; ``None`` means every event passes.
        pass_reco: Reco-level selection, ``(N,)`` bool; ``None`` means every event passes.
        weights: Event weights, ``(N,)``; ``None`` means unit weights.

    Raises:
        InvalidEventsError: the levels are not Events or differ in length, a level carries its
            own weights, a pass mask or the weights have the wrong shape, weights are not
            finite, or some events pass neither selection (the message names them).

    Example:
        >>> gen = Events.observed(torch.tensor([[1.0], [2.0], [3.0]]))
        >>> reco = Events.observed(torch.tensor([[1.1], [0.0], [2.9]]))
        >>> pairs = PairedEvents(gen, reco, pass_reco=torch.tensor([True, False, True]))
        >>> pairs.misses.tolist(), len(pairs.level("reco")), pairs.conditional(target="gen").latent[:, 0].tolist()
        ([False, True, False], 2, [1.0, 3.0])
    """

    gen: Events
    reco: Events
    pass_gen: Tensor | None = None
    pass_reco: Tensor | None = None
    weights: Tensor | None = None

    def __post_init__(self) -> None:
        for level in LEVELS:
            value = getattr(self, level)
            if not isinstance(value, Events):
                raise InvalidEventsError(f"PairedEvents.{level} must be Events, got {type(value).__name__}.")
            if value.weights is not None:
                raise InvalidEventsError(
                    f"PairedEvents.{level} carries its own weights; give one weight per event as PairedEvents(weights=...) "
                    f"(e.g. {level}.replace(weights=None) and weights={level}.weights)."
                )
        n, device = len(self.gen), self.gen.device
        if len(self.reco) != n:
            raise InvalidEventsError(f"PairedEvents: gen has {n} events but reco has {len(self.reco)}; the levels pair row by row.")
        pass_gen = _pass_mask("pass_gen", self.pass_gen, n, device)
        pass_reco = _pass_mask("pass_reco", self.pass_reco, n, device)
        neither = torch.nonzero(~pass_gen & ~pass_reco)[:, 0]
        if len(neither):
            raise InvalidEventsError(
                f"PairedEvents: {len(neither)} of {n} events pass neither selection (rows {_rows_text(neither)}); "
                "an event seen at neither level carries no information: drop these rows."
            )
        object.__setattr__(self, "pass_gen", pass_gen)
        object.__setattr__(self, "pass_reco", pass_reco)
        if self.weights is not None:
            w = torch.as_tensor(self.weights, device=device)
            w = w if w.is_floating_point() else w.to(torch.get_default_dtype())
            if w.dim() != 1 or w.shape[0] != n:
                raise InvalidEventsError(f"PairedEvents.weights has shape {tuple(w.shape)}; it must be ({n},).")
            bad = torch.nonzero(~torch.isfinite(w))[:, 0]
            if len(bad):
                raise InvalidEventsError(
                    f"PairedEvents.weights has non-finite values in {len(bad)} of {n} rows (rows {_rows_text(bad)})."
                )
            object.__setattr__(self, "weights", w)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_arrays(cls, gen: Any, reco: Any, *, pass_gen: Any = None, pass_reco: Any = None, weights: Any = None,
                    gen_mask: Any = None, reco_mask: Any = None) -> "PairedEvents":
        """Pairs of observed events from arrays; NaN/inf placeholders of a failed level are zero-filled.

        Args:
            gen: Gen-level observables, ``(N, D)`` or a padded set ``(N, M, F)``.
            reco: Reco-level observables, ``(N, D')`` or ``(N, M', F')``.
            pass_gen, pass_reco: Selections, ``(N,)`` bool.
            weights: ``(N,)``.
            gen_mask, reco_mask: Set masks of the levels, ``(N, M)`` and ``(N, M')``.

        Raises:
            InvalidEventsError: non-finite values in a level an event passes (named by
                :class:`Events`), or any of the errors of the constructor.
        """
        levels = {}
        for name, x, flags, mask in (("gen", gen, pass_gen, gen_mask), ("reco", reco, pass_reco, reco_mask)):
            x = torch.as_tensor(x)
            x = x if x.is_floating_point() else x.to(torch.get_default_dtype())
            if flags is not None and x.dim() >= 2:
                failed = ~_pass_mask(f"pass_{name}", flags, x.shape[0], x.device)
                shape = (-1,) + (1,) * (x.dim() - 1)
                x = torch.where(failed.reshape(shape) & ~torch.isfinite(x), torch.zeros((), dtype=x.dtype), x)
            levels[name] = Events.observed(x, mask=mask)
        return cls(levels["gen"], levels["reco"], pass_gen=pass_gen, pass_reco=pass_reco, weights=weights)

    @classmethod
    def concatenate(cls, parts: Sequence["PairedEvents"]) -> "PairedEvents":
        """Concatenate along the event axis; each level as :meth:`Events.concatenate` (sets of
        different lengths padded to the longest), missing weights filled with ones."""
        parts = list(parts)
        if not parts:
            raise InvalidEventsError("PairedEvents.concatenate needs at least one part.")
        weights = None
        if any(p.weights is not None for p in parts):
            weights = torch.cat([p.weights_or_ones() for p in parts])
        return cls(
            gen=Events.concatenate([p.gen for p in parts]),
            reco=Events.concatenate([p.reco for p in parts]),
            pass_gen=torch.cat([p.pass_gen for p in parts]),
            pass_reco=torch.cat([p.pass_reco for p in parts]),
            weights=weights,
        )

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self.gen)

    @property
    def device(self) -> torch.device:
        return self.gen.device

    @property
    def matched(self) -> Tensor:
        """Events passing both selections, ``(N,)`` bool."""
        return self.pass_gen & self.pass_reco

    @property
    def misses(self) -> Tensor:
        """Events passing gen but not reco (inefficiency), ``(N,)`` bool."""
        return self.pass_gen & ~self.pass_reco

    @property
    def fakes(self) -> Tensor:
        """Events passing reco but not gen (fakes), ``(N,)`` bool."""
        return self.pass_reco & ~self.pass_gen

    def weights_or_ones(self) -> Tensor:
        """Event weights, or ones, ``(N,)``."""
        if self.weights is not None:
            return self.weights
        return torch.ones(len(self), dtype=torch.get_default_dtype(), device=self.device)

    # ------------------------------------------------------------------ training views
    def level(self, name: Level, *, passing: bool = True) -> Events:
        """One level as Events carrying the pair weights: the events passing its selection (or all).

        Args:
            name: ``"gen"`` or ``"reco"``.
            passing: Keep only the events that pass this level's selection (default).
        """
        if name not in LEVELS:
            raise InvalidEventsError(f"PairedEvents.level: name must be one of {LEVELS}, got {name!r}.")
        events = getattr(self, name).replace(weights=self.weights) if self.weights is not None else getattr(self, name)
        return events[getattr(self, f"pass_{name}")] if passing else events

    def conditional(self, *, target: Level = "gen") -> Events:
        r"""Matched events as one Events for a conditional density :math:`q(\mathrm{target}\,|\,\mathrm{other})`.

        ``x`` (with ``mask`` and ``spectator``) and ``theta`` come from the other level, the
        target level's observables become ``latent`` (a set target becomes a 3-D ``latent``
        with ``latent_mask``), weights are the pair weights. Only events passing both
        selections are kept: both values must be real. A latent of the target level itself is
        not carried.
        """
        if target not in LEVELS:
            raise InvalidEventsError(f"PairedEvents.conditional: target must be one of {LEVELS}, got {target!r}.")
        context = self.reco if target == "gen" else self.gen
        goal = getattr(self, target)
        keep = self.matched
        return Events(x=context.x, theta=context.theta, mask=context.mask, spectator=context.spectator,
                      latent=goal.x, latent_mask=goal.mask, weights=self.weights)[keep]

    # ------------------------------------------------------------------ transforms
    def __getitem__(self, index: Any) -> "PairedEvents":
        """Select events by slice, integer tensor or boolean mask (no re-validation)."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return _unchecked(self.gen[index], self.reco[index], self.pass_gen[index], self.pass_reco[index],
                          None if self.weights is None else self.weights[index])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "PairedEvents":
        """Move both levels, masks and weights to ``device`` (floating fields cast to ``dtype`` if given)."""
        w = self.weights
        if w is not None:
            w = w.to(device=device, dtype=dtype) if dtype is not None else w.to(device=device)
        return _unchecked(self.gen.to(device, dtype), self.reco.to(device, dtype), self.pass_gen.to(device),
                          self.pass_reco.to(device), w)

    def replace(self, **changes: Any) -> "PairedEvents":
        """A copy with some fields replaced, validated again."""
        return dataclasses.replace(self, **changes)

    def with_weights(self, weights: Any) -> "PairedEvents":
        """A copy with new event weights ``(N,)`` (e.g. one unfolding iteration's)."""
        return self.replace(weights=weights)

    def split(self, fraction: float, *, generator: torch.Generator | None = None) -> tuple["PairedEvents", "PairedEvents"]:
        """Random split of whole pairs into (``1 - fraction``, ``fraction``) parts.

        Raises:
            InvalidEventsError: ``fraction`` not in (0, 1) or a part would be empty.
        """
        first, second = split_indices(len(self), fraction, generator=generator)
        return self[first.to(self.device)], self[second.to(self.device)]

    # ------------------------------------------------------------------ flat form (store)
    def tensors(self) -> dict[str, Tensor]:
        """Every set field by flat name: ``gen/x``, ``reco/mask``, ..., ``pass_gen``, ``pass_reco``, ``weights``."""
        out = {f"{level}/{name}": t for level in LEVELS for name, t in getattr(self, level).tensors().items()}
        out.update({name: getattr(self, name) for name in _PAIR_FIELDS if getattr(self, name) is not None})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> "PairedEvents":
        """Inverse of :meth:`tensors` (validated).

        Raises:
            InvalidEventsError: a name that is neither a pair field nor ``gen/<field>`` /
                ``reco/<field>`` of an Events field.
        """
        levels: dict[str, dict[str, Tensor]] = {level: {} for level in LEVELS}
        pair: dict[str, Tensor] = {}
        for name, t in tensors.items():
            level, _, field = name.partition("/")
            if level in LEVELS and field in TENSOR_FIELDS:
                levels[level][field] = t
            elif name in _PAIR_FIELDS:
                pair[name] = t
            else:
                raise InvalidEventsError(f"PairedEvents.from_tensors: unknown field {name!r}.")
        return cls(gen=Events(**levels["gen"]), reco=Events(**levels["reco"]), **pair)

    def __repr__(self) -> str:
        return (f"PairedEvents(n={len(self)}, matched={int(self.matched.sum())}, misses={int(self.misses.sum())}, "
                f"fakes={int(self.fakes.sum())}, gen={self.gen!r}, reco={self.reco!r})")


def _unchecked(gen: Events, reco: Events, pass_gen: Tensor, pass_reco: Tensor, weights: Tensor | None) -> PairedEvents:
    """PairedEvents from already validated parts (slices, moves) without re-validating."""
    pairs = object.__new__(PairedEvents)
    for name, value in zip(("gen", "reco", "pass_gen", "pass_reco", "weights"), (gen, reco, pass_gen, pass_reco, weights)):
        object.__setattr__(pairs, name, value)
    return pairs
