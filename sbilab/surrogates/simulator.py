r"""A learned surrogate of a whole simulator :math:`q(x\mid\theta)`: :class:`SimulatorSurrogate`.

A :class:`~sbilab.estimators.ConditionalDensity` whose context is θ and whose target is the
observables (box bounds = the fiducial selection, so draws never need rejection), trained with
``get_loss("density", target="latent")`` on the view :func:`~sbilab.surrogates.pairs.simulator_events`.
Wrapped as a :class:`~sbilab.simulators.Simulator`: ``sample(theta, generator)`` returns
:class:`~sbilab.events.Events` like the original; ``log_prob`` and ``score`` are exact *for the
surrogate* (the flow's density and its autograd θ-gradient), so ratios, scores and Neyman
constructions of the surrogate need no further training. θ outside the space it was trained on
is refused (:class:`~sbilab.exceptions.OutOfSupportError`). Publishable.

Refinement (:mod:`sbilab.surrogates.refine`) of a whole simulator uses the features ``[θ, x]``:
when surrogate and original events are drawn at the same θ distribution, the classifier's ratio
is the conditional :math:`p_\mathrm{orig}(x\mid\theta)/q(x\mid\theta)` (normalised in x for
every θ, up to the classifier's error), so the refined likelihood is simply::

    clf = train_refinement(torch.cat([ev_sur.theta, ev_sur.x], 1), torch.cat([ev_orig.theta, ev_orig.x], 1))
    refined = lambda x, th: surrogate.log_prob(x, th) + log_weight(clf, torch.cat([th.expand(len(x), -1), x], 1))
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..estimators import ConditionalDensity, get_loss
from ..events import Events
from ..exceptions import ConfigError, ShapeMismatchError
from ..nets.flows import FlowSpec
from ..registry import build_module, module_spec, register_publishable
from ..simulators.base import Simulator, autograd_score
from ..simulators.space import ParameterSpace
from ..training import fit
from .pairs import simulator_events

__all__ = ["SimulatorSurrogate", "train_simulator_surrogate"]


@register_publishable
class SimulatorSurrogate(nn.Module, Simulator):
    r"""A simulator :math:`q(x\mid\theta)` learned by a conditional flow (see the module docs).

    Args:
        density: :math:`q(x\mid\theta)`: ``D`` features given ``P`` context features.
        space: The parameter space it was trained on (θ outside is refused).
        observable_names: Names of the ``D`` observables.
    """

    def __init__(self, density: ConditionalDensity, space: ParameterSpace | Mapping[str, Any], observable_names: Sequence[str]) -> None:
        super().__init__()
        space = ParameterSpace.from_dict(dict(space)) if isinstance(space, Mapping) else space
        names = tuple(observable_names)
        if density.context_features != space.dim or density.features != len(names) or density.is_set:
            raise ConfigError(f"SimulatorSurrogate: the density models {density.features} features given {density.context_features}; "
                              f"the simulator has {len(names)} observables {list(names)} and {space.dim} parameters.")
        self.density, self.space, self.observable_names = density, space, names
        self.training_record: dict[str, Any] = {}

    @property
    def name(self) -> str:
        return "SimulatorSurrogate"

    def _theta(self, theta: Any, n: int | None) -> Tensor:
        t = torch.as_tensor(theta)
        t = t if t.is_floating_point() else t.to(torch.get_default_dtype())
        if t.dim() <= 1:
            t = t.reshape(1, -1).expand(1 if n is None else n, -1)
        if n is not None and t.shape[0] != n:
            raise ShapeMismatchError(f"SimulatorSurrogate: theta has {t.shape[0]} rows for {n} events; give (P,) or (N, P).")
        self.space.check(t.detach(), argument="SimulatorSurrogate theta")
        return t

    @torch.no_grad()
    def sample(self, theta: Tensor, generator: torch.Generator | None = None) -> Events:
        """One surrogate event per row of ``theta (N, P)``.

        Raises:
            OutOfSupportError: θ outside the trained space.
        """
        t = self._theta(theta, None)
        x = self.density.sample(1, t, generator=generator)[0]
        return Events(x=x.to(t.dtype), theta=t)

    def log_prob(self, x: Any, theta: Any) -> Tensor:
        r""":math:`\log q(x\mid\theta)`, ``(N,)``, differentiable in θ; ``x (N, D)``, ``theta (P,)`` or ``(N, P)``.

        Raises:
            OutOfSupportError: θ outside the space, or x outside the density's bounds.
        """
        x = torch.as_tensor(x)
        x = x.reshape(-1, 1) if x.dim() == 1 and len(self.observable_names) == 1 else x
        return self.density.log_prob(x, self._theta(theta, x.shape[0]))

    def score(self, x: Any, theta: Any) -> Tensor:
        r""":math:`\nabla_\theta\log q(x\mid\theta)` by autograd, ``(N, P)``."""
        x = torch.as_tensor(x)
        return autograd_score(self.log_prob, x.reshape(-1, 1) if x.dim() == 1 else x, theta, self.space.dim)

    def spec(self) -> dict[str, Any]:
        """JSON-able constructor arguments."""
        return {"density": module_spec(self.density), "space": self.space.to_dict(), "observable_names": list(self.observable_names)}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "SimulatorSurrogate":
        """Rebuild an (untrained) surrogate from :meth:`spec`."""
        spec = dict(spec)
        return cls(build_module(spec.pop("density")), **spec)


def train_simulator_surrogate(
    events: Events,
    space: ParameterSpace,
    *,
    low: Sequence[float | None] | None = None,
    high: Sequence[float | None] | None = None,
    observable_names: Sequence[str] | None = None,
    flow: FlowSpec | None = None,
    epochs: int = 30,
    batch_size: int = 512,
    learning_rate: float = 2e-3,
    validation_fraction: float = 0.1,
    patience: int | None = None,
    seed: int = 0,
    progress: bool = False,
    device: str = "cpu",
) -> SimulatorSurrogate:
    r"""Train a :class:`SimulatorSurrogate` on simulated ``events`` (``x (N, D)``, ``theta (N, P)``).

    Args:
        events: Simulated events with their θ.
        space: The parameter space; every event's θ must lie inside it.
        low, high: Bounds of the observables (the fiducial selection).
        flow: Density architecture (default ``FlowSpec("nsf", transforms=3, hidden=(64, 64))``).
        patience: Early stopping on the validation NLL (``None``: the whole schedule; the best epoch is kept).

    Raises:
        InvalidEventsError: events without θ or with set observables.
        OutOfSupportError: some θ outside ``space``.
    """
    view = simulator_events(events)
    space.check(events.theta, argument="train_simulator_surrogate events.theta")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        q = ConditionalDensity.from_events(view, target="latent", low=low, high=high,
                                           flow=flow or FlowSpec("nsf", transforms=3, hidden=(64, 64)))
    res = fit(q, get_loss("density", target="latent"), view, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
              validation_fraction=validation_fraction, patience=patience, seed=seed, progress=progress, device=device)
    names = tuple(observable_names) if observable_names is not None else tuple(f"x{i}" for i in range(events.n_observables))
    surrogate = SimulatorSurrogate(q, space, names)
    surrogate.training_record = {"events": len(events), "best_epoch": res.best_epoch, "val_loss": res.best_val_loss}
    return surrogate.eval()
