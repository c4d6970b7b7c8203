r"""Seeded (re-)initialisation of a network's parameters, buffers kept.

A network's initial weights are part of what determines a training run. :func:`reinitialise`
draws them again from a seed — every submodule's ``reset_parameters()`` (what torch's layers
call in their constructors, so the distribution is the constructor's) under a private copy of
torch's global RNG — and leaves the buffers (standardisation constants, reference points) as
they were. :func:`~sbilab.training.fit` calls it with its ``seed`` (``init="seed"``), so that
``fit(..., seed=s)`` alone fixes a run, however and wherever the estimator was built.

Parameters that no ``reset_parameters()`` draws (a bare ``nn.Parameter`` on a custom module)
keep their values: give such a module a ``reset_parameters()`` to have them seeded too.
"""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

__all__ = ["reinitialise", "reset_parameters", "draw_seeds"]


def draw_seeds(k: int, generator: torch.Generator | None = None) -> list[int]:
    """``k`` integer seeds in ``[0, 2**62)`` from ``generator`` (default: torch's global RNG)."""
    return [int(s) for s in torch.randint(0, 2**62, (k,), generator=generator).tolist()]


def reset_parameters(module: nn.Module, seed: int) -> None:
    """Call ``reset_parameters`` of every submodule under a private global RNG seeded with ``seed``.

    Buffers are not restored here (``BatchNorm.reset_parameters`` resets its running statistics);
    :func:`reinitialise` restores them.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()


@torch.no_grad()
def reinitialise(module: nn.Module, seed: int) -> nn.Module:
    r"""Draw ``module``'s parameters again from ``seed``; its buffers keep their values.

    The same ``seed`` gives the same weights whatever torch's global RNG state and whatever
    device the module is on (they are drawn on the CPU); the global RNG is left untouched. A
    module whose own ``reset_parameters`` takes a ``generator`` gets one seeded with ``seed``: an
    :class:`~sbilab.nets.ensemble.Ensemble` draws its members' seeds from it, as
    ``Ensemble(template, k, generator=torch.Generator().manual_seed(seed))`` does.

    Args:
        module: Any ``nn.Module``; modified in place.
        seed: Integer seed.

    Returns:
        ``module``.

    Example:
        >>> a, b = nn.Linear(3, 2), nn.Linear(3, 2)
        >>> bool(torch.equal(reinitialise(a, 7).weight, reinitialise(b, 7).weight))
        True
    """
    if any(p.device.type != "cpu" for p in module.parameters()):  # draw on the CPU: the same weights on any device
        fresh = reinitialise(copy.deepcopy(module).cpu(), seed)
        for p, q in zip(module.parameters(), fresh.parameters()):
            p.copy_(q)
        return module
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    generator = torch.Generator().manual_seed(int(seed))
    own = getattr(module, "reset_parameters", None)
    if callable(own) and "generator" in inspect.signature(own).parameters:  # e.g. an Ensemble: one seed per member
        own(generator=generator)
    else:
        reset_parameters(module, draw_seeds(1, generator)[0])
    for name, b in module.named_buffers():
        b.copy_(buffers[name])
    return module
