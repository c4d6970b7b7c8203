r"""The pieces of one optimisation step of :func:`~sbilab.training.fit`.

Per-event losses are reduced to one weighted mean per member (with weights shared by the
members, or one weight column per member); gradients are clipped per
member (an ensemble's members must not share a clipping factor, or they would not train
independently); the best weights are tracked per member.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..exceptions import ShapeMismatchError
from .config import TrainingConfig

__all__ = ["adam", "reduce_losses", "clip_gradients", "clone_state", "copy_best"]


def adam(params: list[Tensor], config: TrainingConfig) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build supports it for the parameters' device."""
    try:
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def reduce_losses(per_event: Tensor, weights: Tensor | None, k: int, n: int) -> Tensor:
    r"""Weighted mean over events of per-event losses ``(N,)`` or ``(K, N)``; returns ``()`` or ``(K,)``.

    ``weights`` are ``(N,)`` (shared by every member) or, for an ensemble of ``K`` members,
    ``(N, K)``: member ``k`` gets :math:`\sum_i w_{ik}\ell_{ki} / \sum_i w_{ik}`, exactly the loss
    of a separate run with weights ``weights[:, k]`` on the same batch (bootstrap replicas
    trained as one ensemble).

    Raises:
        ShapeMismatchError: the loss is not per event, or ``(N, K)`` weights do not match the ensemble.
    """
    expected = (n,) if k == 1 else (k, n)
    if not isinstance(per_event, Tensor) or tuple(per_event.shape) != expected:
        got = tuple(per_event.shape) if isinstance(per_event, Tensor) else type(per_event).__name__
        raise ShapeMismatchError(
            f"fit: the loss returned {got} for a batch of {n} events; it must return per-event losses of shape "
            f"{expected} (no mean: fit applies the event weights and reduces)."
        )
    if per_event.dtype in (torch.float16, torch.bfloat16):
        per_event = per_event.float()
    if weights is None:
        return per_event.mean(dim=-1)
    if weights.dim() == 2:
        if k == 1 or tuple(weights.shape) != (n, k):
            raise ShapeMismatchError(
                f"fit: the events carry per-member weights of shape {tuple(weights.shape)}; they need an ensemble of "
                f"K = {weights.shape[1]} members (fit(..., ensemble={weights.shape[1]}) or an Ensemble of that size), "
                f"got K = {k}."
            )
        member = weights.T.to(per_event.dtype)  # (K, N)
        return (per_event * member).sum(dim=-1) / member.sum(dim=-1)
    return (per_event * weights).sum(dim=-1) / weights.sum()


def clip_gradients(params: list[Tensor], max_norm: float, k: int) -> None:
    """Clip the gradient norm to ``max_norm``; per member (leading axis) for ensembles."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if k == 1:
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return
    squares = torch.stack([g.reshape(k, -1).pow(2).sum(dim=1) for g in grads]).sum(dim=0)
    scale = (max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.reshape((k,) + (1,) * (g.dim() - 1)))


def clone_state(model: nn.Module) -> dict[str, Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


@torch.no_grad()
def copy_best(best: dict[str, Tensor], model: nn.Module, members: list[int], k: int) -> None:
    """Copy the current weights of the improved ``members`` into ``best`` (all of them for k = 1)."""
    for name, t in model.state_dict().items():
        if k == 1:
            best[name].copy_(t)
        else:
            index = torch.tensor(members, device=t.device)
            best[name][index] = t[index]
