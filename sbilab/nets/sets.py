r"""Permutation-invariant embeddings of events given as variable-length sets of particles.

A set is a padded tensor ``x: (N, M, F)`` (``M`` slots of ``F`` features) with a boolean
``mask: (N, M)`` that is ``True`` for real particles. Padding slots never influence the output:
their features are zeroed before any arithmetic (so NaN padding is harmless, also for
gradients) and they are excluded from the pooling (deep sets) or from attention (transformer).

* :class:`DeepSets`: :math:`\rho\big(\bigoplus_{i \in \text{set}} \phi(x_i)\big)` with
  :math:`\oplus` a masked sum or mean (Zaheer et al., arXiv:1703.06114; Energy Flow Networks,
  Komiske, Metodiev, Thaler, arXiv:1810.05165).
* :class:`SetTransformer`: a small transformer encoder without positional encoding, with a key
  padding mask, followed by masked mean pooling (Lee et al., arXiv:1810.00825; Particle
  Transformer, Qu, Li, Qian, arXiv:2202.03772).
* :class:`NestedDeepSets`: a set of sets, e.g. the events of a data set each given as its set of
  particles: deep sets over each event's particles, then deep sets over the events.

This module owns the vocabulary of *embedding kinds*, the names by which estimators' specs
(``embedding={"kind": ..., "out_features": E, ...}``) choose an embedding network: each kind is
registered where its network is defined (:func:`register_embedding`) with whether it embeds
sets or vectors, and :func:`build_embedding` is the one function that turns a spec into a
module. Kinds: ``"deepsets"``, ``"transformer"`` and ``"nested_deepsets"`` (sets), ``"mlp"`` (vectors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..exceptions import ConfigError, ShapeMismatchError
from .mlp import MLP

__all__ = ["DeepSets", "SetTransformer", "NestedDeepSets", "set_embedding", "EmbeddingInfo", "EMBEDDINGS", "register_embedding", "build_embedding"]


@dataclass(frozen=True)
class EmbeddingInfo:
    """A registered embedding kind.

    Attributes:
        name: The kind's name in specs, e.g. ``"deepsets"``.
        sets: ``True``: it embeds padded sets ``x (N, M, F)`` with a mask ``(N, M)``; ``False``: vectors ``(N, D)``.
        build: ``build(in_features, out_features, **options) -> nn.Module``.
    """

    name: str
    sets: bool
    build: Callable[..., nn.Module]


EMBEDDINGS: dict[str, EmbeddingInfo] = {}
"""Every registered embedding kind by name (filled by :func:`register_embedding`)."""


def register_embedding(name: str, *, sets: bool) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a class or factory ``(in_features, out_features, **options) -> nn.Module`` as embedding kind ``name``."""

    def decorate(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        old = EMBEDDINGS.get(name)
        if old is not None and (old.build.__module__, old.build.__qualname__) != (build.__module__, build.__qualname__):
            raise ConfigError(f"register_embedding: the kind {name!r} is already taken by {old.build.__module__}.{old.build.__qualname__}.")
        EMBEDDINGS[name] = EmbeddingInfo(name, bool(sets), build)
        return build

    return decorate


def build_embedding(embedding: Mapping[str, Any] | nn.Module | None, in_features: int, *, sets: bool,
                    owner: str = "embedding") -> nn.Module | None:
    """The embedding network of a spec: ``{"kind": ..., "out_features": E (default 32), **options}``.

    Args:
        embedding: The spec (default kind ``"deepsets"`` for sets, ``"mlp"`` for vectors), a
            ready module (returned as it is) or ``None`` (no embedding).
        in_features: Features per set entry ``F``, or ``D`` for vectors.
        sets: Whether the observations are padded sets.
        owner: Name used in error messages (the estimator being built).

    Raises:
        ConfigError: unknown kind, or a kind for sets given vectors (or the reverse).

    Example:
        >>> build_embedding({"kind": "deepsets", "out_features": 8, "hidden": [16]}, 3, sets=True).out_features
        8
    """
    if embedding is None or isinstance(embedding, nn.Module):
        return embedding
    options = dict(embedding)
    kind = options.pop("kind", "deepsets" if sets else "mlp")
    info = EMBEDDINGS.get(kind)
    if info is None:
        raise ConfigError(f"{owner}: unknown embedding kind {kind!r}; choose one of {sorted(EMBEDDINGS)} "
                          f"({', '.join(k for k, v in sorted(EMBEDDINGS.items()) if v.sets)} for sets).")
    if info.sets != bool(sets):
        raise ConfigError(
            f"{owner}: the {kind!r} embedding is for {'sets' if info.sets else 'vector observables'}; "
            + (f"use one of {sorted(k for k, v in EMBEDDINGS.items() if v.sets)} for sets." if sets
               else "pass sets=True for set observations (or use kind 'mlp' for vectors).")
        )
    if "hidden" in options:
        options["hidden"] = tuple(int(h) for h in options["hidden"])
    return info.build(in_features, int(options.pop("out_features", 32)), **options)


@register_embedding("mlp", sets=False)
def _mlp_embedding(in_features: int, out_features: int, *, hidden: Sequence[int] = (64, 64), **options: Any) -> nn.Module:
    """An :class:`~sbilab.nets.mlp.MLP` embedding of vector observables (hidden widths (64, 64) by default)."""
    return MLP(in_features, out_features, hidden=tuple(hidden), **options)


def _clean(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Zero the padding slots of ``x (..., M, F)``; return it and a float mask ``(..., M, 1)``."""
    if x.dim() < 3:
        raise ShapeMismatchError(
            f"set embedding: x has shape {tuple(x.shape)}; it must be a padded set (N, M, F) with a mask (N, M)."
        )
    if mask is None:
        mask = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:-1]:
        raise ShapeMismatchError(f"set embedding: mask has shape {tuple(mask.shape)}, expected {tuple(x.shape[:-1])} for x.")
    m = mask.unsqueeze(-1)
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)), m.to(x.dtype)


def _pool(h: Tensor, m: Tensor, pooling: str) -> Tensor:
    """Masked sum or mean over the set axis of ``h (..., M, L)`` with ``m (..., M, 1)``."""
    total = (h * m).sum(dim=-2)
    if pooling == "sum":
        return total
    return total / m.sum(dim=-2).clamp(min=1.0)


@register_embedding("deepsets", sets=True)
class DeepSets(nn.Module):
    r"""Deep-sets embedding :math:`\rho(\sum_i \phi(x_i))` of a padded set.

    Args:
        in_features: Features per particle ``F``.
        out_features: Size ``E`` of the embedding.
        hidden: Hidden widths of both :math:`\phi` and :math:`\rho`.
        latent: Size of the per-particle representation :math:`\phi(x_i)`.
        pooling: ``"sum"`` (keeps the multiplicity, as in Energy Flow Networks) or ``"mean"``.
        activation: Activation name (see :func:`sbilab.nets.activation`).

    Shapes: ``x: (N, M, F)``, ``mask: (N, M)`` bool -> ``(N, E)``.

    Example:
        >>> net = DeepSets(3, 8, hidden=(16,), latent=16)
        >>> x, mask = torch.randn(2, 5, 3), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
        >>> net(x, mask).shape
        torch.Size([2, 8])
    """

    def __init__(self, in_features: int, out_features: int, *, hidden: Sequence[int] = (64, 64), latent: int = 64,
                 pooling: str = "sum", activation: str = "silu") -> None:
        super().__init__()
        if pooling not in ("sum", "mean"):
            raise ConfigError(f"DeepSets: pooling must be 'sum' or 'mean', got {pooling!r}.")
        self.phi = MLP(in_features, latent, hidden=hidden, activation=activation)
        self.rho = MLP(latent, out_features, hidden=hidden, activation=activation)
        self.pooling = pooling
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, m = _clean(x, mask)
        return self.rho(_pool(self.phi(x), m, self.pooling))


@register_embedding("transformer", sets=True)
class SetTransformer(nn.Module):
    r"""Small transformer encoder over a padded set, masked mean pooling, linear head.

    No positional encoding, so the output is invariant under permutations of the particles;
    padding slots are excluded from attention by the key padding mask.

    Args:
        in_features: Features per particle ``F``.
        out_features: Size ``E`` of the embedding.
        dim: Model width.
        heads: Attention heads (must divide ``dim``).
        layers: Encoder layers.
        activation: ``"relu"`` or ``"gelu"`` inside the encoder's feed-forward blocks.

    Shapes: ``x: (N, M, F)``, ``mask: (N, M)`` bool -> ``(N, E)``.

    Example:
        >>> net = SetTransformer(3, 8, dim=16, heads=2, layers=1)
        >>> net(torch.randn(2, 4, 3), torch.ones(2, 4, dtype=torch.bool)).shape
        torch.Size([2, 8])
    """

    def __init__(self, in_features: int, out_features: int, *, dim: int = 32, heads: int = 4, layers: int = 2,
                 activation: str = "gelu") -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"SetTransformer: dim={dim} must be divisible by heads={heads}.")
        self.embed = nn.Linear(in_features, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, activation=activation,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, out_features))
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, m = _clean(x, mask)
        keep = m[..., 0] > 0
        # an empty set would make every attention row -inf; let its (zeroed) first slot attend to itself
        first = torch.zeros_like(keep)
        first[..., 0] = True
        keep = keep | (first & ~keep.any(dim=-1, keepdim=True))
        h = self.encoder(self.embed(x), src_key_padding_mask=~keep)
        return self.head(_pool(h, m, "mean"))


@register_embedding("nested_deepsets", sets=True)
class NestedDeepSets(nn.Module):
    r"""A set of sets: deep sets over the members of each inner set, then deep sets over the inner sets.

    .. math:: \rho_2\Big(\tfrac1{|S|}\sum_{e \in S} \rho_1\big(\sum_{i \in e} \phi_1(x_{ei})\big)\Big)

    (the outer sum through :math:`\phi_2` as in :class:`DeepSets`). The input keeps the padded-set
    layout of every estimator, ``x (N, K·B, F)`` with ``mask (N, K·B)``: inner set ``k`` occupies
    the ``block`` = B consecutive slots ``k·B ... k·B + B - 1`` (e.g. the particles of event k of a
    data set, :func:`sbilab.simulators.simulate_datasets`), its padding has mask False, and an inner
    set with no true slot is absent. Invariant under permutations of the inner sets and of the
    members within each.

    Args:
        in_features: Features per member ``F``.
        out_features: Size ``E`` of the embedding.
        block: Slots per inner set ``B``.
        inner: Size of each inner set's embedding.
        hidden: Hidden widths of the four MLPs.
        latent: Size of the per-member and per-inner-set representations before pooling.
        inner_pooling, outer_pooling: ``"sum"`` or ``"mean"`` (default: sum over members, keeping the
            multiplicity; mean over inner sets, so the data-set size can vary).

    Shapes: ``x: (N, K·B, F)``, ``mask: (N, K·B)`` -> ``(N, E)``.

    Example:
        >>> net = NestedDeepSets(2, 8, block=3, inner=4, hidden=(16,), latent=8)
        >>> x, mask = torch.randn(5, 12, 2), torch.rand(5, 12) > 0.3
        >>> net(x, mask).shape
        torch.Size([5, 8])
    """

    def __init__(self, in_features: int, out_features: int, *, block: int, inner: int = 16, hidden: Sequence[int] = (64, 64),
                 latent: int = 32, inner_pooling: str = "sum", outer_pooling: str = "mean", activation: str = "silu") -> None:
        super().__init__()
        if not (isinstance(block, int) and block >= 1):
            raise ConfigError(f"NestedDeepSets: block must be a positive number of slots per inner set, got {block!r}.")
        self.block = block
        self.members = DeepSets(in_features, inner, hidden=hidden, latent=latent, pooling=inner_pooling, activation=activation)
        self.sets = DeepSets(inner, out_features, hidden=hidden, latent=latent, pooling=outer_pooling, activation=activation)
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x, m = _clean(x, mask)
        n, slots, f = x.shape
        if slots % self.block:
            raise ShapeMismatchError(
                f"NestedDeepSets: x has {slots} slots per observation, not a multiple of block = {self.block}; lay the inner "
                "sets out in blocks of equal length (pad each with mask False)."
            )
        k = slots // self.block
        member_mask = m[..., 0].reshape(n * k, self.block) > 0
        h = self.members(x.reshape(n * k, self.block, f), member_mask).reshape(n, k, -1)
        return self.sets(h, member_mask.any(-1).reshape(n, k))


def set_embedding(kind: str, in_features: int, out_features: int, **options: Any) -> nn.Module:
    """Build a set embedding by kind, e.g. ``"deepsets"`` (:class:`DeepSets`) or ``"transformer"`` (:class:`SetTransformer`).

    ``options`` are passed to the class (JSON-able, so a spec can rebuild the network); the
    kinds are those of :func:`build_embedding` that embed sets.
    """
    return build_embedding({"kind": kind, "out_features": out_features, **options}, in_features, sets=True)
