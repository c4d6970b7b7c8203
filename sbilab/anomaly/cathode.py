r"""CATHODE's learned background model: a conditional flow :math:`q(x|m)` trained in the sidebands.

CATHODE (Hallin et al., arXiv:2109.00546) learns the background's feature density conditioned on
the resonant mass in the sidebands, where the signal is negligible, and samples it at masses of
the signal region: if :math:`q(x|m)` interpolates :math:`p_b(x|m)` into the SR, a classifier of
SR data against those samples approaches the idealised one (data against true background).

Here the flow is the core's :class:`~sbilab.estimators.ConditionalDensity` with the mass as its
context (``Events.x = m``) and the features as its target (``Events.latent = x``), trained by
:func:`sbilab.training.fit` with the ``"density"`` loss, and wrapped as a
:class:`FlowBackground` that satisfies :class:`~sbilab.anomaly.weak.BackgroundModel`
(``sample(n, m (n, 1), generator) -> (n, D)``, ``log_prob(x, m) -> (n,)``). Its quality is
measurable on a toy with an exact :math:`p_b(x|m)`: :meth:`FlowBackground.kl_to` is the Monte
Carlo estimate of :math:`\mathbb E_{p_b}[\log p_b(x|m) - \log q(x|m)]` on SR background events.

Example:
    >>> from sbilab.anomaly import AnomalyToy, sideband_events
    >>> toy = AnomalyToy()
    >>> data = toy.dataset(20_000, 0.0, generator=torch.Generator().manual_seed(0))
    >>> model = fit_background_model(sideband_events(data, toy.window), BackgroundFlow(epochs=2, transforms=1, hidden=(8,)))
    >>> model.sample(3, torch.full((3, 1), 3.0), generator=torch.Generator().manual_seed(1)).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..estimators import ConditionalDensity, get_loss
from ..events import Events
from ..exceptions import ConfigError, InvalidEventsError, ShapeMismatchError
from ..nets.flows import FlowSpec
from ..training import fit

__all__ = ["BackgroundFlow", "FlowBackground", "fit_background_model"]


@dataclass(frozen=True)
class BackgroundFlow:
    """Architecture and training of CATHODE's background flow (defaults: a small MAF, 30 epochs).

    The defaults were chosen on the anomaly toy (7.1k sideband events, KL to the exact p(x|m) in
    the SR): MAF 3 x (32, 32), 30 epochs 0.0023 ± 0.0004 nats; spline 2 x (32, 32), 15 / 40 epochs
    0.0036 / 0.0068; spline 4 x (64, 64), 40 epochs 0.016 (over-fits the sidebands).

    Attributes:
        kind, transforms, hidden, bins: The :class:`~sbilab.nets.flows.FlowSpec` of the flow.
        epochs, batch_size, learning_rate: ``fit`` options (cosine schedule, the last epoch kept:
            the sidebands are the only data, so none is held back for early stopping).
        seed: Initial weights and batch order.
        min_events: Fewest sideband events accepted (a flow on fewer interpolates noise).
        device: ``fit``'s device.
    """

    kind: str = "maf"
    transforms: int = 3
    hidden: tuple[int, ...] = (32, 32)
    bins: int = 8
    epochs: int = 30
    batch_size: int = 512
    learning_rate: float = 3e-3
    seed: int = 0
    min_events: int = 1000
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "min_events"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BackgroundFlow: {name} = {value!r} must be a positive integer.")
        if not self.learning_rate > 0:
            raise ConfigError(f"BackgroundFlow: learning_rate = {self.learning_rate!r} must be > 0.")
        object.__setattr__(self, "hidden", tuple(self.hidden))

    @property
    def spec(self) -> FlowSpec:
        """The flow architecture as a core :class:`~sbilab.nets.flows.FlowSpec` (validated there)."""
        return FlowSpec(self.kind, transforms=self.transforms, hidden=self.hidden, bins=self.bins)  # type: ignore[arg-type]


class FlowBackground:
    r"""A trained :class:`~sbilab.estimators.ConditionalDensity` :math:`q(x|m)` seen as a CATHODE background model.

    Args:
        density: The flow, with a one-column context (the mass) and the features as target.
    """

    def __init__(self, density: ConditionalDensity) -> None:
        if not isinstance(density, ConditionalDensity) or density.is_set:
            raise ConfigError(f"FlowBackground: density must be a vector-context ConditionalDensity, got {type(density).__name__}.")
        self.density = density.cpu().eval()

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.density.parameters()).dtype

    @property
    def features(self) -> int:
        """Number of features D the model generates."""
        return int(self.density.features)

    def _mass(self, context: Any, n: int, what: str) -> Tensor:
        m = torch.as_tensor(context, dtype=self._dtype).reshape(-1, 1)
        if m.shape[0] != n:
            raise ShapeMismatchError(f"FlowBackground.{what}: context has {m.shape[0]} masses for {n} events; give one mass per event, (n, 1).")
        return m

    @torch.no_grad()
    def sample(self, n: int, context: Any, generator: torch.Generator | None = None) -> Tensor:
        """``n`` feature vectors, one at each mass of ``context (n, 1)``, ``(n, D)``."""
        return self.density.sample(1, self._mass(context, n, "sample"), generator=generator)[0]

    @torch.no_grad()
    def log_prob(self, x: Any, context: Any) -> Tensor:
        r""":math:`\log q(x|m)`, ``x (N, D)``, ``context (N, 1)`` -> ``(N,)``."""
        x = torch.as_tensor(x, dtype=self._dtype)
        return self.density.log_prob(x, self._mass(context, x.shape[0], "log_prob"))

    @torch.no_grad()
    def kl_to(self, exact: Any, events: Events) -> tuple[float, float]:
        r"""Monte Carlo :math:`\mathrm{KL}(p\,\|\,q)` and its standard error on ``events`` drawn from ``exact``.

        Args:
            exact: The true conditional density (``log_prob(x, m)``), e.g. ``AnomalyToy.background_model()``.
            events: Draws of the true background, the mass in ``spectator (N, 1)``.
        """
        if events.spectator is None:
            raise InvalidEventsError("FlowBackground.kl_to: events need the mass as spectator (N, 1).")
        m = events.spectator[:, :1]
        d = (exact.log_prob(events.x.double(), m.double()).double() - self.log_prob(events.x, m).double())
        return float(d.mean()), float(d.std() / d.numel() ** 0.5)


def fit_background_model(sideband: Events, options: BackgroundFlow = BackgroundFlow(), *, progress: bool = False) -> FlowBackground:
    r"""Train CATHODE's :math:`q(x|m)` on sideband events (features ``x``, mass in ``spectator``).

    Args:
        sideband: Events of the sidebands (:func:`~sbilab.anomaly.weak.sideband_events`), weights honoured.
        options: Flow architecture and training.
        progress: Show ``fit``'s progress bar.

    Raises:
        InvalidEventsError: no mass (``spectator``), a mass of more than one column, or fewer than
            ``options.min_events`` events.
    """
    if sideband.spectator is None or sideband.spectator.shape[1] != 1:
        raise InvalidEventsError("fit_background_model: sideband needs the mass as a one-column spectator (N, 1); "
                                 "select the events with sideband_events(data, window).")
    if sideband.is_set:
        raise InvalidEventsError("fit_background_model: set-valued features are not supported by the background flow; give (N, D) features.")
    if len(sideband) < options.min_events:
        raise InvalidEventsError(f"fit_background_model: {len(sideband)} sideband events, fewer than min_events = {options.min_events}; "
                                 "widen the sidebands, use more data, or lower min_events knowingly.")
    x = sideband.x.to(torch.get_default_dtype())  # the flow's parameters' dtype (toys simulate in float64)
    train = Events(x=sideband.spectator.to(x.dtype), theta=x.new_zeros(len(sideband), 0), latent=x, weights=sideband.weights)
    torch.manual_seed(options.seed)
    density = ConditionalDensity.from_events(train, target="latent", flow=options.spec)
    result = fit(density, get_loss("density", target="latent"), train, epochs=options.epochs, batch_size=options.batch_size,
                 learning_rate=options.learning_rate, seed=options.seed, device=options.device, validation_fraction=0.0,
                 patience=None, progress=progress)
    return FlowBackground(result.model)
