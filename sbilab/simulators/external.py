r"""Adapters for external simulators: any Python callable, or an sbi-style simulator and prior.

A wrapped simulator has no latent path, so it supports the methods that need no augmented data
(CARL/NRE classifiers, NDE, NPE); it is a :class:`~sbilab.simulators.base.Simulator` like any toy.

Seeding (everything random takes a generator): with ``seed_keyword`` the callable receives an
integer seed drawn from the generator as that keyword argument (the clean way). Otherwise, when a
generator is given, the callable runs with torch's and numpy's global generators seeded from it
and restored afterwards, so callables that use the global state are reproducible too.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..events import Events
from ..exceptions import NonFiniteOutputError, ShapeMismatchError
from .base import Simulator
from .space import ParameterSpace

__all__ = ["CallableSimulator", "from_sbi"]


@contextlib.contextmanager
def _seeded_globals(seed: int | None) -> Iterator[None]:
    """Seed torch's and numpy's global generators with ``seed`` and restore them afterwards."""
    if seed is None:
        yield
        return
    state = np.random.get_state()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(state)


class CallableSimulator(Simulator):
    r"""Wrap ``fn(theta) -> x`` as a simulator.

    Args:
        fn: ``fn(theta (N, P)) -> x (N, D)`` if ``vectorized``, else ``fn(theta (P,)) -> x (D,)``;
            numpy arrays or torch tensors in and out (see ``numpy``).
        space: The parameter space of ``fn``.
        observable_names: Names of the D outputs; default ``x0, x1, ...`` found by one call at
            the reference point.
        vectorized: Whether ``fn`` takes a batch of parameter points.
        numpy: Pass θ as a float64 numpy array instead of a torch tensor.
        seed_keyword: Name of ``fn``'s seed argument, if it has one (see module docs).
        progress: Show a progress bar when looping over rows (``vectorized=False``).

    Raises:
        ShapeMismatchError: ``fn`` returned a shape other than ``(N, D)``.
        NonFiniteOutputError: ``fn`` returned NaN or inf (the message names the rows).

    Example:
        >>> space = ParameterSpace(("mu",), low=(-1.0,), high=(1.0,))
        >>> sim = CallableSimulator(lambda t, seed: t + np.random.default_rng(seed).normal(size=t.shape),
        ...                         space, ["x"], numpy=True, seed_keyword="seed")
        >>> sim.simulate(3, generator=torch.Generator().manual_seed(0)).x.shape
        torch.Size([3, 1])
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        space: ParameterSpace,
        observable_names: Sequence[str] | None = None,
        *,
        vectorized: bool = True,
        numpy: bool = False,
        seed_keyword: str | None = None,
        progress: bool = True,
        name: str | None = None,
    ) -> None:
        if not callable(fn):
            raise ShapeMismatchError(f"CallableSimulator: fn must be callable, got {type(fn).__name__}.")
        self.fn = fn
        self.space = space
        self.vectorized = bool(vectorized)
        self.numpy = bool(numpy)
        self.seed_keyword = seed_keyword
        self.progress = bool(progress)
        self._name = name or getattr(fn, "__name__", type(fn).__name__)
        if observable_names is None:
            probe = self._run(space.reference.to(torch.get_default_dtype()).unsqueeze(0), torch.Generator().manual_seed(0), None)
            observable_names = tuple(f"x{i}" for i in range(probe.shape[1]))
        self.observable_names = tuple(observable_names)

    @property
    def name(self) -> str:
        return self._name

    def _call(self, theta: Tensor, seed: int | None) -> Any:
        arg: Any = theta.detach().cpu().to(torch.float64).numpy() if self.numpy else theta
        if self.seed_keyword is not None:
            return self.fn(arg, **{self.seed_keyword: seed})
        with _seeded_globals(seed):
            return self.fn(arg)

    def _run(self, theta: Tensor, generator: torch.Generator | None, n_obs: int | None) -> Tensor:
        n = theta.shape[0]
        draw = generator is not None or self.seed_keyword is not None
        seeds = torch.randint(0, 2**62, (n if not self.vectorized else 1,), generator=generator).tolist() if draw else None
        if self.vectorized:
            out = _to_tensor(self._call(theta, None if seeds is None else seeds[0]), "fn(theta)")
        else:
            rows = []
            for i in tqdm(range(n), desc=f"simulating {self._name}", disable=not self.progress or n < 100):
                x_i = _to_tensor(self._call(theta[i], None if seeds is None else seeds[i]), f"fn(theta[{i}])")
                rows.append(x_i.reshape(1, -1))
            out = torch.cat(rows) if rows else theta.new_zeros(0, n_obs or 0)
        if out.dim() == 1 and (n_obs in (None, 1)) and out.shape[0] == n:
            out = out.unsqueeze(1)
        if out.dim() != 2 or out.shape[0] != n or (n_obs is not None and out.shape[1] != n_obs):
            expected = f"({n}, {n_obs if n_obs is not None else 'D'})"
            raise ShapeMismatchError(
                f"{self._name}: returned shape {tuple(out.shape)} for {n} parameter points; expected {expected}, "
                "one row of observables per row of theta."
            )
        bad = ~torch.isfinite(out).all(dim=1)
        if bool(bad.any()):
            first = int(torch.nonzero(bad)[0, 0])
            raise NonFiniteOutputError(
                f"{self._name}: returned NaN or inf for {int(bad.sum())} of {n} parameter points "
                f"(first: theta={theta[first].tolist()}, x={out[first].tolist()}). Fix the simulator or restrict the "
                "parameter space to where it is valid."
            )
        return out.to(torch.get_default_dtype())

    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Events:
        """Run the callable on ``theta (N, P)``; returns Events with ``x (N, D)`` (no latent)."""
        theta = torch.as_tensor(theta, dtype=torch.get_default_dtype())
        x = self._run(theta, generator, len(self.observable_names))
        return Events(x=x, theta=theta)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "vectorized": self.vectorized}


def _to_tensor(value: Any, what: str) -> Tensor:
    try:
        out = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
    except Exception as err:  # noqa: BLE001 - reported below
        raise ShapeMismatchError(f"{what}: cannot convert {type(value).__name__} to an array ({err}).") from err
    return out if out.is_floating_point() else out.to(torch.float64)


def from_sbi(
    simulator: Callable[[Tensor], Tensor],
    prior: Any,
    *,
    names: Sequence[str] | None = None,
    observable_names: Sequence[str] | None = None,
    reference: Any = None,
    vectorized: bool = True,
) -> CallableSimulator:
    r"""Wrap an sbi-style simulator (``simulator(theta: Tensor (N, P)) -> x (N, D)``) and its prior.

    The parameter space comes from the prior's support (:meth:`ParameterSpace.from_prior`) and
    uses the prior as proposal; the simulator runs with torch's global generator seeded from
    the generator passed to ``sample``.

    Example:
        >>> prior = torch.distributions.Independent(torch.distributions.Uniform(torch.zeros(2), torch.ones(2)), 1)
        >>> sim = from_sbi(lambda t: t + 0.1 * torch.randn_like(t), prior, names=["a", "b"])
        >>> sim.observable_names, sim.space.low.tolist()
        (('x0', 'x1'), [0.0, 0.0])
    """
    if names is None:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            p = int(torch.as_tensor(prior.sample((1,))).reshape(1, -1).shape[1])
        names = tuple(f"theta_{i}" for i in range(p))
    space = ParameterSpace.from_prior(tuple(names), prior, reference=reference)
    return CallableSimulator(simulator, space, observable_names, vectorized=vectorized, name=getattr(simulator, "__name__", "sbi_simulator"))
