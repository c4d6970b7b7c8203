r"""The sampler vocabulary: every posterior sampler registers itself under its name where it is defined.

A sampler is a function ``sampler(log_posterior, n, *, generator=None, **options) -> SamplingResult``
(``log_posterior``: a :class:`~sbilab.inference.potential.LogPosterior` or any
``theta (C, P) -> (C,)``). :func:`~sbilab.inference.sample_posterior` looks the name up here; a
new sampler needs only the decorator, no second table. The built-in samplers register when
:mod:`sbilab.inference` is imported (which importing any of its modules does first).

Example:
    >>> sorted(SAMPLERS)
    ['importance', 'mcmc']
"""

from __future__ import annotations

from typing import Any, Callable

from ..exceptions import ConfigError

__all__ = ["SAMPLERS", "register_sampler", "get_sampler"]

SAMPLERS: dict[str, Callable[..., Any]] = {}
"""Every registered sampler by name (filled by :func:`register_sampler`)."""


def register_sampler(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a sampler function under ``name``.

    Raises:
        ConfigError: another function holds the name.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        old = SAMPLERS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ConfigError(f"register_sampler: the name {name!r} is already taken by {old.__module__}.{old.__qualname__}.")
        SAMPLERS[name] = fn
        return fn

    return decorate


def get_sampler(name: str) -> Callable[..., Any]:
    """The sampler registered under ``name``.

    Raises:
        ConfigError: no sampler has that name.
    """
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"Unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}.") from None
