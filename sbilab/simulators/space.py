r"""Parameter spaces: names, bounds, a reference point and a proposal for :math:`\theta`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from ..exceptions import OutOfSupportError, ParameterSpaceError

__all__ = ["ParameterSpace"]


@dataclass(frozen=True, eq=False)
class ParameterSpace:
    r"""A box of physics parameters with a reference point and a proposal distribution.

    Args:
        names: Parameter names, e.g. ``("M", "Gamma")``.
        low: Lower bounds, one per name (``-inf`` allowed if the proposal is given).
        high: Upper bounds, one per name.
        reference: The reference point :math:`\theta_\mathrm{ref}` of ratio estimators
            (default: centre of the box).
        proposal: Optional distribution of :math:`\theta` used to draw training points: any
            object with ``sample(sample_shape)`` returning ``(n, P)`` (a torch distribution
            or an sbi prior). Default: uniform over the box.

    Example:
        >>> space = ParameterSpace(("M", "Gamma"), low=(95.0, 2.0), high=(105.0, 8.0))
        >>> space.reference.tolist()
        [100.0, 5.0]
        >>> space.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 2])
    """

    names: tuple[str, ...]
    low: Tensor
    high: Tensor
    reference: Tensor | None = None
    proposal: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        if not names or len(set(names)) != len(names):
            raise ParameterSpaceError(f"ParameterSpace: names must be unique and non-empty, got {names}.")
        low = torch.as_tensor(self.low, dtype=torch.float64).reshape(-1)
        high = torch.as_tensor(self.high, dtype=torch.float64).reshape(-1)
        if low.numel() != len(names) or high.numel() != len(names):
            raise ParameterSpaceError(
                f"ParameterSpace: {len(names)} names but {low.numel()} lower and {high.numel()} upper bounds."
            )
        if bool((low >= high).any()):
            i = int(torch.nonzero(low >= high)[0, 0])
            raise ParameterSpaceError(f"ParameterSpace: bound of {names[i]!r} has low={low[i].item()} >= high={high[i].item()}.")
        if self.proposal is None and not bool(torch.isfinite(low).all() & torch.isfinite(high).all()):
            raise ParameterSpaceError("ParameterSpace: infinite bounds need a `proposal` distribution to draw theta from.")
        if self.reference is None:
            if not bool(torch.isfinite(low).all() & torch.isfinite(high).all()):
                raise ParameterSpaceError("ParameterSpace: give a `reference` point when bounds are infinite.")
            reference = (low + high) / 2
        else:
            reference = torch.as_tensor(self.reference, dtype=torch.float64).reshape(-1)
            if reference.numel() != len(names):
                raise ParameterSpaceError(f"ParameterSpace: reference has {reference.numel()} values for {len(names)} names.")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "reference", reference)
        self.check(reference.unsqueeze(0), argument="ParameterSpace.reference")

    @classmethod
    def from_prior(cls, names: Sequence[str], prior: Any, *, reference: Any = None) -> "ParameterSpace":
        """A space whose bounds come from a prior's support (sbi ``BoxUniform`` or any torch prior)."""
        support = getattr(prior, "support", None)
        low = getattr(support, "lower_bound", None)
        high = getattr(support, "upper_bound", None)
        base = getattr(support, "base_constraint", None)
        if low is None and base is not None:
            low, high = getattr(base, "lower_bound", None), getattr(base, "upper_bound", None)
        n = len(tuple(names))
        low = torch.full((n,), -torch.inf) if low is None else torch.as_tensor(low).reshape(-1).expand(n)
        high = torch.full((n,), torch.inf) if high is None else torch.as_tensor(high).reshape(-1).expand(n)
        if reference is None:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                reference = prior.sample((4096,)).reshape(4096, n).double().mean(0)
        return cls(tuple(names), low, high, reference=reference, proposal=prior)

    @property
    def dim(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        """Position of parameter ``name``; raises :class:`ParameterSpaceError` listing the known names."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ParameterSpaceError(f"Unknown parameter {name!r}; this space has {list(self.names)}.") from None

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` points from the proposal, ``(n, P)`` in the default dtype."""
        dtype = torch.get_default_dtype()
        if self.proposal is None:
            u = torch.rand(n, self.dim, generator=generator, dtype=torch.float64)
            return (self.low + u * (self.high - self.low)).to(dtype)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else None
        with torch.random.fork_rng():
            if seed is not None:
                torch.manual_seed(seed)
            theta = self.proposal.sample((n,))
        return torch.as_tensor(theta).reshape(n, self.dim).to(dtype)

    def contains(self, theta: Tensor) -> Tensor:
        """Which rows of ``theta (N, P)`` lie inside the box (bounds included), ``(N,)`` bool."""
        t = torch.as_tensor(theta)
        low = self.low.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float64)
        high = self.high.to(device=t.device, dtype=low.dtype)
        return ((t >= low) & (t <= high)).all(dim=-1)

    def check(self, theta: Tensor, *, argument: str = "theta") -> None:
        """Raise :class:`OutOfSupportError` unless ``theta (N, P)`` lies inside the box."""
        t = torch.as_tensor(theta)
        if t.dim() != 2 or t.shape[1] != self.dim:
            raise OutOfSupportError(
                f"{argument} has shape {tuple(t.shape)}; expected (N, {self.dim}) for parameters {list(self.names)}."
            )
        inside = self.contains(t)
        if not bool(inside.all()):
            bad = torch.nonzero(~inside)[:, 0]
            row = int(bad[0])
            raise OutOfSupportError(
                f"{argument}: {bad.numel()} of {t.shape[0]} rows lie outside the parameter space "
                f"(first row {row}: {dict(zip(self.names, t[row].tolist()))}; bounds "
                f"{dict(zip(self.names, zip(self.low.tolist(), self.high.tolist())))}). "
                "Use points inside the space the estimator was trained on, or widen the space and retrain."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (the proposal is recorded by type name only)."""
        return {
            "names": list(self.names),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "reference": self.reference.tolist(),
            "proposal": None if self.proposal is None else type(self.proposal).__name__,
        }

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "ParameterSpace":
        try:
            return cls(tuple(spec["names"]), spec["low"], spec["high"], reference=spec.get("reference"))
        except KeyError as err:
            raise ParameterSpaceError(f"ParameterSpace spec lacks key {err}; it needs names, low, high.") from None
