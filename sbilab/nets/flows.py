r"""The one flow vocabulary of sbilab: a frozen :class:`FlowSpec` and :func:`build_flow`.

Every normalising flow of the library (posterior, likelihood, conditional densities) is built
here from a JSON-able spec, so the kinds, their options and their validation live in one place:

==================  ==========================================================  ================
kind                transform                                                   reference
==================  ==========================================================  ================
``"nsf"``           autoregressive monotonic rational-quadratic splines         arXiv:1906.04032
``"maf"``           masked autoregressive affine                                arXiv:1705.07057
``"nsf_coupling"``  spline coupling layers (alternating halves)                 arXiv:1906.04032
``"realnvp"``       affine coupling layers (alternating halves)                 arXiv:1605.08803
==================  ==========================================================  ================

Autoregressive flows evaluate a density in one pass but sample in ``features`` sequential
passes; coupling flows take one pass either way (faster sampling for many features), and
need at least two features. A flow maps :math:`y \in \mathbb R^D` to a standard normal base
variable conditioned on a context vector :math:`c \in \mathbb R^C`:
:math:`\log q(y|c) = \log \mathcal N(f_c(y); 0, 1) + \log|\det \partial f_c/\partial y|`.

Example:
    >>> spec = FlowSpec("maf", transforms=2, hidden=(16,))
    >>> FlowSpec.from_dict(spec.to_dict()) == spec
    True
    >>> flow = build_flow(spec, features=2, context=3)
    >>> flow(torch.zeros(5, 3)).log_prob(torch.zeros(5, 2)).shape
    torch.Size([5])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Mapping, get_args

import torch  # noqa: F401 - used by the doctest
import zuko
from torch import nn

from ..exceptions import ConfigError

__all__ = ["FlowKind", "FLOW_KINDS", "FlowSpec", "build_flow"]

FlowKind = Literal["nsf", "maf", "nsf_coupling", "realnvp"]
FLOW_KINDS: tuple[str, ...] = get_args(FlowKind)
"""The available flow kinds, in the order of the module table."""


def _positive_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}: {name} must be a positive integer, got {value!r}.")
    return value


@dataclass(frozen=True)
class FlowSpec:
    r"""Architecture of a conditional normalising flow (frozen, JSON-able, validated).

    Attributes:
        kind: One of :data:`FLOW_KINDS` (see the module table).
        transforms: Number of flow transforms (autoregressive or coupling layers), ``>= 1``.
        hidden: Hidden widths of each transform's conditioner network, e.g. ``(64, 64)``.
        bins: Spline bins of ``"nsf"`` and ``"nsf_coupling"`` (ignored by the affine kinds), ``>= 2``.

    Raises:
        ConfigError: an unknown kind, or a non-positive count or width.
    """

    kind: FlowKind = "nsf"
    transforms: int = 5
    hidden: tuple[int, ...] = (64, 64)
    bins: int = 8

    def __post_init__(self) -> None:
        if self.kind not in FLOW_KINDS:
            raise ConfigError(f"FlowSpec: unknown flow kind {self.kind!r}; choose one of {FLOW_KINDS}.")
        _positive_int("FlowSpec", "transforms", self.transforms)
        _positive_int("FlowSpec", "bins", self.bins)
        if self.bins < 2:
            raise ConfigError(f"FlowSpec: bins must be at least 2 (a spline needs two knots), got {self.bins}.")
        if isinstance(self.hidden, (str, bytes)) or not hasattr(self.hidden, "__iter__"):
            raise ConfigError(f"FlowSpec: hidden must be a sequence of layer widths such as (64, 64), got {self.hidden!r}.")
        hidden = tuple(self.hidden)
        for width in hidden:
            _positive_int("FlowSpec", "every hidden width", width)
        object.__setattr__(self, "hidden", hidden)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the spec (JSON-able; ``hidden`` as a list)."""
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "FlowSpec":
        """The spec from :meth:`to_dict` output; missing keys take their defaults.

        Raises:
            ConfigError: ``spec`` is not a mapping, or has keys that are not fields of FlowSpec.
        """
        if not isinstance(spec, Mapping):
            raise ConfigError(f"FlowSpec.from_dict: expected a mapping of options, got {type(spec).__name__}.")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - fields)
        if unknown:
            raise ConfigError(f"FlowSpec.from_dict: unknown option(s) {unknown}; the options are {sorted(fields)}.")
        return cls(**spec)


def build_flow(spec: FlowSpec, features: int, context: int) -> nn.Module:
    r"""A zuko conditional flow over ``features`` dimensions given ``context`` features.

    Calling the result with a context ``c (..., C)`` gives a distribution over ``y (..., D)``
    (``log_prob``, ``rsample``; ``.transform`` maps ``y`` to the base variable). Spline
    transforms keep a minimal slope of 10⁻³ so that they stay invertible in floating point.

    Args:
        spec: The architecture.
        features: Dimension ``D`` of the modelled variable.
        context: Dimension ``C`` of the conditioning vector (``0``: unconditional).

    Raises:
        ConfigError: a coupling kind with fewer than two features, or non-positive sizes.
    """
    if not isinstance(spec, FlowSpec):
        raise ConfigError(f"build_flow: spec must be a FlowSpec (FlowSpec.from_dict for dicts), got {type(spec).__name__}.")
    _positive_int("build_flow", "features", features)
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ConfigError(f"build_flow: context must be a non-negative integer, got {context!r}.")
    hidden = tuple(int(h) for h in spec.hidden)
    kind, bins, transforms = spec.kind, spec.bins, spec.transforms
    if kind == "nsf":
        return zuko.flows.NSF(features, context, bins=bins, transforms=transforms, hidden_features=hidden)
    if kind == "maf":
        return zuko.flows.MAF(features, context, transforms=transforms, hidden_features=hidden)
    if features < 2:
        raise ConfigError(f"build_flow: flow kind {kind!r} (coupling) needs >= 2 features, got {features}; use 'nsf' or 'maf'.")
    extra: dict[str, Any] = {}
    if kind == "nsf_coupling":
        extra = dict(univariate=partial(zuko.transforms.MonotonicRQSTransform, slope=1e-3),
                     shapes=[(bins,), (bins,), (bins - 1,)])
    return zuko.flows.NICE(features, context, transforms=transforms, hidden_features=hidden, **extra)
