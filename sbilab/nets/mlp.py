r"""Multi-layer perceptrons and input standardisation.

Standardisation constants are buffers, so a saved network carries its preprocessing and
follows its module to any device.
"""

from __future__ import annotations

import numbers
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..exceptions import ConfigError, ShapeMismatchError

__all__ = ["Standardize", "MLP", "ResidualMLP", "activation", "check_widths"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    """An activation module by name (``relu``, ``elu``, ``silu``, ``gelu``, ``tanh``, ``softplus``, ``leaky_relu``).

    Raises:
        ConfigError: unknown name.
    """
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(f"Unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}.") from None


_activation = activation  # alias for classes whose keyword argument shadows the name


class Standardize(nn.Module):
    r"""Affine map :math:`(x - \mu)/\sigma` with :math:`\mu, \sigma` stored as buffers.

    Args:
        features: Number of input features ``D``.

    The constants start as (0, 1); :meth:`set_from` fits them to data (``(N, D)`` or the
    last axis of ``(N, M, D)`` with a mask). Columns with zero spread keep :math:`\sigma = 1`.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    @torch.no_grad()
    def set_from(self, data: Tensor, weights: Tensor | None = None, mask: Tensor | None = None) -> "Standardize":
        """Set mean and standard deviation from ``data (N, D)`` (or ``(N, M, D)`` with ``mask (N, M)``)."""
        flat = data.reshape(-1, data.shape[-1]).double()
        if flat.shape[1] != self.mean.numel():
            raise ShapeMismatchError(f"Standardize: data has {flat.shape[1]} features, the layer {self.mean.numel()}.")
        w = torch.ones(flat.shape[0], dtype=flat.dtype, device=flat.device)
        if weights is not None:
            w = weights.double().reshape(-1, 1).expand(data.shape[:-1]).reshape(-1) if data.dim() == 3 else weights.double()
        if mask is not None:
            w = w * mask.reshape(-1).double()
        w = w / w.sum()
        mean = (w[:, None] * flat).sum(0)
        std = (w[:, None] * (flat - mean) ** 2).sum(0).sqrt()
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.to(self.std))
        return self

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, y: Tensor) -> Tensor:
        return y * self.std + self.mean


def check_widths(hidden: Sequence[int], *, owner: str, allow_empty: bool = True) -> tuple[int, ...]:
    """``hidden`` as a tuple of layer widths, each an integer >= 1.

    Raises:
        ConfigError: a width is not a positive integer (``hidden=(0,)`` would make a constant
            network), or no width is given where one is needed.
    """
    try:
        widths = tuple(hidden)
    except TypeError:
        raise ConfigError(f"{owner}: hidden must be a sequence of layer widths, e.g. hidden=(100, 100); got {hidden!r}.") from None
    bad = [h for h in widths if isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1]
    if bad or (not widths and not allow_empty):
        raise ConfigError(
            f"{owner}: hidden={list(widths)!r}; every layer width must be an integer >= 1 (a width of 0 makes the network "
            "a constant that ignores its input). Use e.g. hidden=(100, 100)."
        )
    return tuple(int(h) for h in widths)


class MLP(nn.Sequential):
    r"""Fully connected network ``in -> hidden... -> out``.

    Args:
        in_features: Input size.
        out_features: Output size.
        hidden: Widths of the hidden layers, e.g. ``(100, 100)``.
        activation: Name of the activation between layers.

    Example:
        >>> MLP(3, 1, hidden=(16, 16))(torch.zeros(5, 3)).shape
        torch.Size([5, 1])
    """

    def __init__(self, in_features: int, out_features: int, *, hidden: Sequence[int] = (100, 100), activation: str = "silu") -> None:
        hidden = check_widths(hidden, owner="MLP")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), _activation(activation)]
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, act: str) -> None:
        super().__init__()
        self.net = nn.Sequential(activation(act), nn.Linear(width, width), activation(act), nn.Linear(width, width))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


class ResidualMLP(nn.Module):
    r"""Residual network ``Linear -> blocks x (act, Linear, act, Linear) + skip -> act -> Linear``.

    With ``hidden=50, blocks=2, activation="relu"`` this is the shape of sbi's default
    classifier for ratio estimation (NRE).

    Example:
        >>> ResidualMLP(4, 1, hidden=50, blocks=2)(torch.zeros(2, 4)).shape
        torch.Size([2, 1])
    """

    def __init__(self, in_features: int, out_features: int, *, hidden: int = 50, blocks: int = 2, activation: str = "relu") -> None:
        super().__init__()
        (hidden,) = check_widths((hidden,), owner="ResidualMLP")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ConfigError(f"ResidualMLP: blocks must be an integer >= 1, got {blocks!r}.")
        self.inp = nn.Linear(in_features, hidden)
        self.blocks = nn.Sequential(*[_ResidualBlock(hidden, activation) for _ in range(blocks)])
        self.out = nn.Sequential(_activation(activation), nn.Linear(hidden, out_features))
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.blocks(self.inp(x)))
