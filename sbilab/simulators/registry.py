r"""The toy vocabulary: simulators that can be built by name from keyword options.

A toy registers itself where it is defined, ``@register_toy("resonance")`` on its class; the
analysis configuration (``[simulator] toy = "resonance"`` in ``analysis.toml``) and the command
line look it up here with :func:`build_toy`. Adding a toy needs the decorator and nothing else:
no second table of names. The built-in toys register when :mod:`sbilab.simulators` is imported
(which importing any of its modules does first).

Example:
    >>> {"gaussian", "lifetime", "morphing", "resonance", "resonance_background"} <= set(TOYS)
    True
    >>> type(build_toy("resonance", {"sigma_det": 1.5})).__name__
    'Resonance'
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

from ..exceptions import ConfigError

__all__ = ["TOYS", "register_toy", "build_toy"]

TOYS: dict[str, type] = {}
"""Every registered toy class by name (filled by :func:`register_toy`)."""

_T = TypeVar("_T", bound=type)


def register_toy(name: str) -> Callable[[_T], _T]:
    """Class decorator: register a simulator class under ``name`` (its constructor takes keyword options).

    Raises:
        ConfigError: another class holds the name.
    """

    def decorate(cls: _T) -> _T:
        old = TOYS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ConfigError(f"register_toy: the name {name!r} is already taken by {old.__module__}.{old.__qualname__}.")
        TOYS[name] = cls
        return cls

    return decorate


def build_toy(name: str, options: Mapping[str, Any] | None = None, *, where: str = "toy") -> Any:
    """The toy registered under ``name``, built with keyword ``options``.

    Args:
        name: A registered name (see :data:`TOYS`).
        options: Keyword arguments of the toy's constructor.
        where: Where the name and options come from, for error messages (e.g. ``"analysis.toml: [simulator]"``).

    Raises:
        ConfigError: unknown name, or options the toy's constructor does not take.
    """
    cls = TOYS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"{where}: toy = {name!r}; choose one of {sorted(TOYS)}.")
    options = dict(options or {})
    try:
        return cls(**options)
    except TypeError as err:
        raise ConfigError(f"{where}: options {options} do not fit the {name!r} toy ({err}).") from None
