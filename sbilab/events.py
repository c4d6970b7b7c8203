r"""The one batch type: :class:`Events`.

Every simulator returns :class:`Events`, every store reads and writes them, every loss and
statistic consumes them. Validation happens once, at construction, with errors that name
the field, the number of offending rows and an example row.

Shapes (``N`` events, ``D`` observables, ``M`` particles of ``F`` features, ``P``
parameters, ``L`` latent variables):

========================  ======================  ==============================================
field                     shape                   meaning
========================  ======================  ==============================================
``x``                     ``(N, D)`` or           observables, or a padded particle set
                          ``(N, M, F)``
``theta``                 ``(N, P)``              parameter point each event belongs to
``log_r_joint``           ``(N,)``                :math:`\log p(x,z|\theta)/p(x,z|\theta_\mathrm{ref})`
``score_joint``           ``(N, P)``              :math:`\nabla_\theta \log p(x,z|\theta)`
``weights``               ``(N,)`` or ``(N, K)``  event weights (default: all ones); ``(N, K)``: one
                                                  column per member of an ensemble of ``K`` trained
                                                  at once (e.g. bootstrap replicas)
``label``                 ``(N,)``                1 if drawn at ``theta``, 0 if at the reference
``latent``                ``(N, L)`` or           the simulator's latent path z (e.g. parton level), or
                          ``(N, T, K)``           a padded variable-length history (e.g. a shower's
                                                  ``T`` trial emissions of ``K`` numbers each)
``mask``                  ``(N, M)`` bool         which set entries of ``x`` are real (sets only)
``latent_mask``           ``(N, T)`` bool         which entries of a 3-D ``latent`` are real
``spectator``             ``(N, S)``              variables carried along but *not* inputs of a
                                                  network (e.g. the mass an ABCD/DisCo classifier
                                                  must stay independent of)
========================  ======================  ==============================================

Padded entries (where a mask is false) may hold any value, NaN included: they are never
validated, and every consumer (estimators, losses, :class:`~sbilab.stats.UnbinnedLikelihood`,
:func:`~sbilab.stats.fit_toys`) receives the mask with the set. Two levels of the same events
(generator and detector level, parton and reco level) are a :class:`~sbilab.paired.PairedEvents`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from .exceptions import InvalidEventsError

if TYPE_CHECKING:  # pragma: no cover
    from .simulators.space import ParameterSpace

__all__ = ["Events"]

TENSOR_FIELDS = ("x", "theta", "log_r_joint", "score_joint", "weights", "label", "latent", "mask", "spectator", "latent_mask")
MASK_FIELDS = ("mask", "latent_mask")
SET_FIELDS = {"x": "mask", "latent": "latent_mask"}  # padded set field -> its mask field


def _as_tensor(name: str, value: Any) -> Tensor | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return value
    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - reported to the user below
        raise InvalidEventsError(f"Events.{name}: cannot convert {type(value).__name__} to a tensor ({err}).") from err
    if array.dtype.kind in "iub" and name not in MASK_FIELDS:
        return torch.as_tensor(array, dtype=torch.get_default_dtype())
    return torch.as_tensor(array)


def _first_bad_rows(bad: Tensor) -> tuple[int, int]:
    """Number of rows flagged in ``bad`` (reduced over trailing dims) and the first index."""
    rows = bad.reshape(bad.shape[0], -1).any(dim=1)
    count = int(rows.sum())
    first = int(torch.nonzero(rows)[0, 0]) if count else -1
    return count, first


@dataclass(frozen=True, eq=False)
class Events:
    r"""A batch of simulated or observed events.

    Args:
        x: Observables, ``(N, D)`` or a padded set ``(N, M, F)`` (then give ``mask``).
        theta: Parameter point of each event, ``(N, P)``. For observed data, the parameters
            are unknown: pass ``Events.observed(x)`` which stores a ``(N, 0)`` tensor.
        log_r_joint: Joint log-likelihood ratio against the reference point, ``(N,)``.
        score_joint: Joint score at ``theta``, ``(N, P)``.
        weights: Event weights, ``(N,)``, or ``(N, K)`` with one column per member of an
            ensemble of ``K`` trained at once by :func:`~sbilab.training.fit` (member ``k``
            minimises its loss with weights ``weights[:, k]``, e.g. bootstrap replicas with
            Poisson weights). ``None`` means unit weights.
        label: 1 for events drawn at ``theta``, 0 for events drawn at the reference, ``(N,)``.
        latent: Latent variables of the simulation, ``(N, L)``, or a padded variable-length
            history ``(N, T, K)`` (then give ``latent_mask`` unless every entry is real).
        mask: Validity mask of set entries, ``(N, M)`` bool; only with 3-D ``x``.
        spectator: Variables that travel with the events but are not network inputs, ``(N, S)``.
        latent_mask: Validity mask of history entries, ``(N, T)`` bool; only with 3-D ``latent``.
        space: If given, every ``theta`` row must lie inside it.

    Raises:
        InvalidEventsError: a field has the wrong dimensionality, a length different from
            ``x``, complex values, or NaN/inf entries. The message names the field, how many rows are bad
            and the first one.
        OutOfSupportError: ``space`` is given and some ``theta`` lie outside it.

    Example:
        >>> ev = Events(x=torch.zeros(3, 2), theta=torch.ones(3, 1))
        >>> len(ev), ev.n_observables, ev.n_parameters
        (3, 2, 1)
    """

    x: Tensor
    theta: Tensor
    log_r_joint: Tensor | None = None
    score_joint: Tensor | None = None
    weights: Tensor | None = None
    label: Tensor | None = None
    latent: Tensor | None = None
    mask: Tensor | None = None
    spectator: Tensor | None = None
    latent_mask: Tensor | None = None
    space: "ParameterSpace | None" = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in TENSOR_FIELDS:
            value = _as_tensor(name, getattr(self, name))
            if value is not None and value.is_complex():
                raise InvalidEventsError(
                    f"Events.{name} is complex ({value.dtype}); events hold real numbers and converting would drop the "
                    f"imaginary part. Store real and imaginary parts as separate columns, or pass {name}.real if that is meant."
                )
            if value is not None and name not in MASK_FIELDS and not value.is_floating_point():
                value = value.to(torch.get_default_dtype())
            object.__setattr__(self, name, value)
        x, theta = self.x, self.theta
        if x is None or theta is None:
            raise InvalidEventsError("Events needs both `x` and `theta`; use Events.observed(x) for data without parameters.")
        if x.dim() == 1:
            raise InvalidEventsError(
                f"Events.x has shape {tuple(x.shape)}; it must be (N, D) or (N, M, F). "
                "For one observable per event use x.reshape(-1, 1)."
            )
        if x.dim() not in (2, 3):
            raise InvalidEventsError(f"Events.x has shape {tuple(x.shape)}; it must be (N, D) or (N, M, F).")
        n = x.shape[0]
        expected_dims = {"theta": (2,), "log_r_joint": (1,), "score_joint": (2,), "weights": (1, 2), "label": (1,),
                         "latent": (2, 3), "mask": (2,), "spectator": (2,), "latent_mask": (2,)}
        for name, ndims in expected_dims.items():
            value = getattr(self, name)
            if value is None:
                continue
            if value.dim() not in ndims:
                hint = " (reshape with .reshape(-1, 1) for a single column)" if 2 in ndims and value.dim() == 1 else ""
                raise InvalidEventsError(
                    f"Events.{name} has shape {tuple(value.shape)} but must have {' or '.join(map(str, ndims))} dimensions{hint}."
                )
            if value.shape[0] != n:
                raise InvalidEventsError(
                    f"Events.{name} has {value.shape[0]} rows but x has {n}; every field needs one row per event."
                )
        if self.score_joint is not None and self.score_joint.shape[1] != theta.shape[1]:
            raise InvalidEventsError(
                f"Events.score_joint has {self.score_joint.shape[1]} columns but theta has {theta.shape[1]} parameters."
            )
        for field, mask_name in SET_FIELDS.items():
            mask, values = getattr(self, mask_name), getattr(self, field)
            if mask is None:
                continue
            if values is None or values.dim() != 3 or mask.shape[1] != values.shape[1]:
                raise InvalidEventsError(
                    f"Events.{mask_name} of shape {tuple(mask.shape)} needs {field} of shape (N, {mask.shape[1]}, F); "
                    f"{field} has shape {None if values is None else tuple(values.shape)}."
                )
            object.__setattr__(self, mask_name, mask.bool())
        for name in TENSOR_FIELDS:
            value = getattr(self, name)
            if value is None or name in MASK_FIELDS or not value.is_floating_point():
                continue
            if bool(torch.isfinite(value.sum())):  # a NaN or inf entry makes the sum non-finite: one pass, no copy
                continue
            bad = ~torch.isfinite(value)
            mask = getattr(self, SET_FIELDS[name]) if name in SET_FIELDS else None
            if mask is not None:
                bad = bad & mask.unsqueeze(-1)
            if bool(bad.any()):
                count, first = _first_bad_rows(bad)
                raise InvalidEventsError(
                    f"Events.{name} has non-finite values (NaN or inf) in {count} of {n} rows; "
                    f"first at row {first}: {value[first].tolist()}. Remove or fix these events before use."
                )
        if self.space is not None:
            self.space.check(theta, argument="Events.theta")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def observed(cls, x: Any, *, weights: Any = None, mask: Any = None, spectator: Any = None) -> "Events":
        """Events without parameter labels (observed data). ``theta`` becomes ``(N, 0)``."""
        xt = _as_tensor("x", x)
        if xt is None or xt.dim() < 2:
            raise InvalidEventsError(
                f"Events.observed: x must be (N, D) or (N, M, F), got shape {None if xt is None else tuple(xt.shape)}."
            )
        return cls(x=xt, theta=xt.new_zeros(xt.shape[0], 0), weights=weights, mask=mask, spectator=spectator)

    @classmethod
    def concatenate(cls, parts: Sequence["Events"]) -> "Events":
        """Concatenate batches along the event axis.

        Padded sets of different lengths are padded to the longest: ``x (N_i, M_i, F)`` becomes
        ``(N, max M_i, F)`` with zeros in the new entries and ``mask`` false there, and likewise
        a 3-D ``latent`` with ``latent_mask``. A set part without a mask counts as all real
        (its mask is filled with true), so no padded entry ever becomes real. Other fields
        present in some parts only are dropped.

        Raises:
            InvalidEventsError: no parts, a part without ``x``/``theta``, or a field whose
                per-event shape differs otherwise (e.g. a different number of features).
        """
        parts = list(parts)
        if not parts:
            raise InvalidEventsError("Events.concatenate needs at least one batch.")
        kwargs: dict[str, Any] = {}
        padded: dict[str, list[Tensor]] = {}
        for field, mask_name in SET_FIELDS.items():
            sets = [getattr(p, field) for p in parts]
            if any(v is None or v.dim() != 3 for v in sets):
                continue
            masks = [getattr(p, mask_name) for p in parts]
            if len({v.shape[1] for v in sets}) == 1 and all(m is None for m in masks):
                continue
            longest = max(v.shape[1] for v in sets)
            masks = [m if m is not None else torch.ones(v.shape[:2], dtype=torch.bool, device=v.device) for v, m in zip(sets, masks)]
            padded[field] = [torch.nn.functional.pad(v, (0, 0, 0, longest - v.shape[1])) for v in sets]
            padded[mask_name] = [torch.nn.functional.pad(m, (0, longest - m.shape[1]), value=False) for m in masks]
        for name in TENSOR_FIELDS:
            values = padded.get(name, [getattr(p, name) for p in parts])
            if all(v is not None for v in values):
                shapes = {tuple(v.shape[1:]) for v in values}
                if len(shapes) > 1:
                    raise InvalidEventsError(f"Events.concatenate: field {name} has different shapes across batches: {sorted(shapes)}.")
                kwargs[name] = torch.cat(values, dim=0)
            elif name in ("x", "theta"):
                raise InvalidEventsError(f"Events.concatenate: a batch lacks {name}.")
        return cls(**kwargs, space=parts[0].space)

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def n_observables(self) -> int:
        """``D`` for ``(N, D)`` inputs, ``F`` (features per particle) for sets."""
        return int(self.x.shape[-1])

    @property
    def n_parameters(self) -> int:
        return int(self.theta.shape[1])

    @property
    def is_set(self) -> bool:
        return self.x.dim() == 3

    @property
    def device(self) -> torch.device:
        return self.x.device

    def weights_or_ones(self) -> Tensor:
        """Event weights, or ones of the dtype and device of ``x``, ``(N,)``."""
        if self.weights is not None:
            return self.weights
        return torch.ones(len(self), dtype=self.x.dtype if self.x.is_floating_point() else torch.get_default_dtype(), device=self.device)

    def tensors(self) -> dict[str, Tensor]:
        """The fields that are set, by name."""
        return {name: getattr(self, name) for name in TENSOR_FIELDS if getattr(self, name) is not None}

    # ------------------------------------------------------------------ transforms
    def _map(self, fn) -> "Events":
        values = {name: (fn(v) if v is not None else None) for name, v in ((n, getattr(self, n)) for n in TENSOR_FIELDS)}
        return _unchecked(values, self.space)

    def __getitem__(self, index: Any) -> "Events":
        """Select events by slice, integer tensor or boolean mask (no re-validation)."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return self._map(lambda v: v[index])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Events":
        """Move every tensor to ``device``; floating fields also cast to ``dtype`` if given."""
        def move(v: Tensor) -> Tensor:
            if dtype is not None and v.is_floating_point():
                return v.to(device=device, dtype=dtype)
            return v.to(device=device)
        return self._map(move)

    def replace(self, **changes: Any) -> "Events":
        """A copy with some fields replaced, validated again."""
        return dataclasses.replace(self, **changes)

    def split(self, fraction: float, *, generator: torch.Generator | None = None) -> tuple["Events", "Events"]:
        """Random split into (``1 - fraction``, ``fraction``) parts, e.g. train/validation.

        Raises:
            InvalidEventsError: ``fraction`` not in (0, 1) or a part would be empty.
        """
        first, second = split_indices(len(self), fraction, generator=generator)
        return self[first.to(self.device)], self[second.to(self.device)]

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None) -> Iterator["Events"]:
        """Iterate over consecutive (or shuffled) batches by index, no per-event Python work."""
        n = len(self)
        order = torch.randperm(n, generator=generator).to(self.device) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                yield self[start:start + batch_size]
            else:
                yield self[order[start:start + batch_size]]

    def __repr__(self) -> str:
        parts = [f"{name}={tuple(v.shape)}" for name, v in self.tensors().items()]
        return f"Events(n={len(self)}, " + ", ".join(parts) + f", device={self.device})"


def _unchecked(values: dict[str, Tensor | None], space: "ParameterSpace | None") -> Events:
    """Build Events from already validated tensors (slices, moves) without re-validating."""
    ev = object.__new__(Events)
    for name, value in values.items():
        object.__setattr__(ev, name, value)
    object.__setattr__(ev, "space", space)
    return ev


def split_indices(n: int, fraction: float, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Indices of a random split of ``n`` events into (``1 - fraction``, ``fraction``) parts, on the CPU.

    Raises:
        InvalidEventsError: ``fraction`` not in (0, 1) or a part would be empty.
    """
    if not 0.0 < fraction < 1.0:
        raise InvalidEventsError(f"split: fraction must be in (0, 1), got {fraction}.")
    n_second = int(round(fraction * n))
    if n_second == 0 or n_second == n:
        raise InvalidEventsError(f"split: fraction {fraction} of {n} events leaves an empty part; use more events.")
    perm = torch.randperm(n, generator=generator)
    return perm[n_second:], perm[:n_second]
