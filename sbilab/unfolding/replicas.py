r"""Replicas of an unfolding, trained together: ensembles, bootstraps of data and simulation, systematics.

Every uncertainty of an unbinned unfolding comes from repeating it with something changed
(ATLAS Z+jets, arXiv:2405.20041): the initialisation of the networks (an **ensemble**), the
data (a **bootstrap**: every data event gets a Poisson(1) weight, Efron's resampling in its
Poisson form, so replicas share the events and differ only in weights), the simulation
(Poisson(1) weights on every simulated pair and background event) or the simulation's
per-event weights under a **systematic** variation. As all of them are weights on the same
events, all replicas are members of one ensemble trained at once by
:func:`~sbilab.training.fit` with one weight column per member (``Events.weights (N, K)``).

Members are laid out in a fixed order, which names the published weight columns
(:class:`~sbilab.unfolding.result.UnfoldedResult`):

==================  =========================  ==============================================
members             kind                       weights that differ from the nominal ones
==================  =========================  ==============================================
``0..E-1``          ``"ensemble"``             none (initial weights only)
``E..E+Bd-1``       ``"bootstrap_data"``       data: Poisson(1) per event
``..+Bm-1``         ``"bootstrap_mc"``         simulation and background MC: Poisson(1) per event
``..+S-1``          ``"systematic"``           simulation: the variation's weights
==================  =========================  ==============================================

Example:
    >>> rep = Replicas(ensemble=2, bootstrap_data=3, systematics={"jes_up": torch.ones(5)})
    >>> lay = rep.layout()
    >>> lay.size, lay.kinds
    (6, ('ensemble', 'ensemble', 'bootstrap_data', 'bootstrap_data', 'bootstrap_data', 'systematic'))
    >>> w = rep.data_weights(torch.ones(4))
    >>> w.shape, bool((w[:, :2] == 1).all())
    (torch.Size([4, 6]), True)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import Tensor

from ..exceptions import ConfigError, InvalidEventsError, ShapeMismatchError

__all__ = ["Replicas", "ReplicaLayout"]

_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


@dataclass(frozen=True)
class ReplicaLayout:
    """Which member of the ensemble is which replica.

    Attributes:
        ensemble: Number of nominal members ``E >= 1``.
        bootstrap_data: Data bootstrap replicas ``Bd``.
        bootstrap_mc: Simulation bootstrap replicas ``Bm``.
        systematics: Names of the systematic variations, one member each.
    """

    ensemble: int = 1
    bootstrap_data: int = 0
    bootstrap_mc: int = 0
    systematics: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Number of members ``K``."""
        return self.ensemble + self.bootstrap_data + self.bootstrap_mc + len(self.systematics)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kind of every member, ``K`` entries."""
        return (("ensemble",) * self.ensemble + ("bootstrap_data",) * self.bootstrap_data
                + ("bootstrap_mc",) * self.bootstrap_mc + ("systematic",) * len(self.systematics))

    def members(self, kind: str) -> list[int]:
        """Indices of the members of ``kind`` (``"ensemble"``, ``"bootstrap_data"``, ``"bootstrap_mc"``, ``"systematic"``).

        Raises:
            ConfigError: unknown kind.
        """
        if kind not in ("ensemble", "bootstrap_data", "bootstrap_mc", "systematic"):
            raise ConfigError(f"unknown replica kind {kind!r}; use 'ensemble', 'bootstrap_data', 'bootstrap_mc' or 'systematic'.")
        return [i for i, k in enumerate(self.kinds) if k == kind]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description."""
        return {"ensemble": self.ensemble, "bootstrap_data": self.bootstrap_data, "bootstrap_mc": self.bootstrap_mc,
                "systematics": list(self.systematics)}


def _count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        hint = " (use None for no replicas of this kind)" if minimum == 1 and name != "ensemble" else ""
        raise ConfigError(f"Replicas.{name} must be an integer >= {minimum}; got {value!r}{hint}.")
    return value


@dataclass(frozen=True)
class Replicas:
    """What to repeat: an ensemble, bootstraps of data and simulation, systematic weight variations.

    Args:
        ensemble: Nominal members (different initial weights) ``>= 1``; the nominal result is
            their mean, their spread the model uncertainty.
        bootstrap_data: Data bootstrap replicas, ``None`` for none (``0`` is refused: say ``None``).
        bootstrap_mc: Simulation bootstrap replicas, ``None`` for none.
        systematics: ``{name: weights (N,)}``: the simulation's event weights under each
            variation (replacing the nominal weights; e.g. a detector response reweighted up).
        seed: Seed of the Poisson weights.

    Raises:
        ConfigError: a count below 1, a bad systematic name.
    """

    ensemble: int = 1
    bootstrap_data: int | None = None
    bootstrap_mc: int | None = None
    systematics: Mapping[str, Tensor] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        _count(self.ensemble, "ensemble", 1)
        for name in ("bootstrap_data", "bootstrap_mc"):
            if getattr(self, name) is not None:
                _count(getattr(self, name), name, 1)
        for name in self.systematics:
            if not isinstance(name, str) or not _NAME.match(name) or name == "nominal" or re.match(
                    r"^(ensemble|bootstrap_mc|bootstrap_data)_", name):
                raise ConfigError(f"systematic name {name!r} is invalid or reserved; use letters, digits and _.+- and avoid "
                                  "'nominal', 'ensemble_*', 'bootstrap_mc_*', 'bootstrap_data_*'.")
        object.__setattr__(self, "systematics", dict(self.systematics))

    def layout(self) -> ReplicaLayout:
        """The member layout (see the module docs)."""
        return ReplicaLayout(self.ensemble, self.bootstrap_data or 0, self.bootstrap_mc or 0, tuple(self.systematics))

    def _poisson(self, n: int, members: list[int], k: int, salt: int) -> Tensor:
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + salt)
        out = torch.ones(n, k, dtype=torch.float64)
        if members:
            out[:, members] = torch.poisson(torch.ones(n, len(members), dtype=torch.float64), generator=g)
        return out

    def data_weights(self, weights: Tensor) -> Tensor:
        """Data weights per member, ``(M, K)``, from the nominal ``weights (M,)``."""
        lay = self.layout()
        return weights.to(torch.float64)[:, None] * self._poisson(len(weights), lay.members("bootstrap_data"), lay.size, 1)

    def mc_weights(self, weights: Tensor) -> Tensor:
        """Simulation weights per member, ``(N, K)``, from the nominal ``weights (N,)``.

        Raises:
            ShapeMismatchError: a systematic's weights are not ``(N,)``.
            InvalidEventsError: a systematic's weights are not finite or have a non-positive sum.
        """
        lay = self.layout()
        n = len(weights)
        out = weights.to(torch.float64)[:, None] * self._poisson(n, lay.members("bootstrap_mc"), lay.size, 2)
        for index, (name, w) in zip(lay.members("systematic"), self.systematics.items()):
            w = torch.as_tensor(w, dtype=torch.float64)
            if w.shape != (n,):
                raise ShapeMismatchError(f"Replicas.systematics[{name!r}] has shape {tuple(w.shape)}; it must be ({n},), "
                                         "one weight per simulated event.")
            if not bool(torch.isfinite(w).all()) or float(w.sum()) <= 0:
                raise InvalidEventsError(f"Replicas.systematics[{name!r}] must be finite weights with a positive sum.")
            out[:, index] = w
        return out

    def background_weights(self, weights: Tensor) -> Tensor:
        """Background-MC weights per member, ``(B, K)``: Poisson(1) in the simulation bootstraps."""
        lay = self.layout()
        return weights.to(torch.float64)[:, None] * self._poisson(len(weights), lay.members("bootstrap_mc"), lay.size, 3)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (the systematics by name)."""
        return {**self.layout().to_dict(), "seed": self.seed}
