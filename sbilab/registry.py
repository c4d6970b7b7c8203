r"""The registry of publishable classes: kind name -> class, and the spec of a module.

Publication (:mod:`sbilab.publish`) stores a module as its registered *kind*, the JSON of its
``spec()`` and its tensors; loading rebuilds it with ``cls.from_spec(spec)`` of the class
registered under that kind. Classes register themselves where they are defined, with the
:func:`register_publishable` decorator. This module imports nothing of sbilab but
:mod:`sbilab.exceptions`, so nets, estimators and applications can all register without
depending on the I/O module (and without import cycles).

Example:
    >>> from torch import nn
    >>> @register_publishable(kind="DocAffine")
    ... class Affine(nn.Linear):
    ...     def spec(self): return {"n": self.in_features}
    ...     @classmethod
    ...     def from_spec(cls, spec): return cls(spec["n"], 1)
    >>> entry = module_spec(Affine(3, 1))
    >>> entry, type(build_module(entry)).__name__
    ({'kind': 'DocAffine', 'spec': {'n': 3}}, 'Affine')
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

import torch
from torch.overrides import TorchFunctionMode

from .exceptions import PublishError

__all__ = ["register_publishable", "publishable_kinds", "registered_class", "kind_of", "module_spec", "build_module", "jsonable",
           "state_shapes_without_memory"]

_REGISTRY: dict[str, type] = {}


def register_publishable(cls: type | None = None, *, kind: str | None = None) -> Any:
    """Class decorator: make ``cls`` publishable under a stable kind name.

    The kind is ``kind``, else a ``publish_kind`` attribute defined on the class itself, else
    ``cls.__name__``. The class needs ``spec() -> dict`` (JSON-able constructor arguments),
    a classmethod ``from_spec(spec)``, ``state_dict()`` and ``load_state_dict(state, strict=True)``
    (every ``nn.Module`` has the last two). Use as ``@register_publishable`` or
    ``@register_publishable(kind="MyNet")``.

    Raises:
        PublishError: the class lacks a method, or another class holds the kind.
    """
    if cls is None:
        return lambda c: register_publishable(c, kind=kind)
    name = kind or cls.__dict__.get("publish_kind") or cls.__name__
    missing = [m for m in ("spec", "from_spec", "state_dict", "load_state_dict") if not callable(getattr(cls, m, None))]
    if missing:
        raise PublishError(f"register_publishable: {cls.__qualname__} lacks {missing}; publishable classes need all four.")
    old = _REGISTRY.get(name)
    if old is not None and old is not cls and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise PublishError(
            f"register_publishable: kind {name!r} is already taken by {old.__module__}.{old.__qualname__}; "
            f"give {cls.__qualname__} another kind (register_publishable(kind=...) or a publish_kind attribute)."
        )
    _REGISTRY[name] = cls
    return cls


def publishable_kinds() -> list[str]:
    """The registered kinds, sorted."""
    return sorted(_REGISTRY)


def registered_class(kind: Any) -> type | None:
    """The class registered under ``kind``, or ``None``."""
    return _REGISTRY.get(kind) if isinstance(kind, str) else None


def kind_of(obj: Any) -> str:
    """The registered kind of ``obj``'s exact class.

    Raises:
        PublishError: the class is not registered.
    """
    for name, cls in _REGISTRY.items():
        if type(obj) is cls:
            return name
    raise PublishError(
        f"{type(obj).__qualname__} is not publishable: decorate its class with @register_publishable "
        f"(it needs spec() and from_spec()). Registered kinds: {publishable_kinds()}."
    )


def jsonable(obj: Any, what: str) -> Any:
    """``obj`` after a JSON round trip (tuples become lists), or a PublishError naming ``what``."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as err:
        raise PublishError(f"{what} is not JSON-serialisable ({err}); use numbers, strings, lists and dicts.") from err


def module_spec(module: Any) -> dict[str, Any]:
    """``{"kind": ..., "spec": ...}`` of a registered module, for specs that nest other modules."""
    return {"kind": kind_of(module), "spec": jsonable(module.spec(), f"{type(module).__qualname__}.spec()")}


def build_module(entry: Mapping[str, Any]) -> Any:
    """Build an untrained module from :func:`module_spec` output, via the registry only.

    Raises:
        PublishError: no class is registered under the kind, or its ``from_spec`` fails.
    """
    kind = entry.get("kind") if isinstance(entry, Mapping) else None
    cls = registered_class(kind)
    if cls is None:
        raise PublishError(
            f"no publishable class is registered under kind {kind!r}; known kinds: {publishable_kinds()}. "
            "Import the package that defines it before loading (files never import code themselves)."
        )
    try:
        return cls.from_spec(entry.get("spec"))
    except PublishError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of from_spec means the spec does not fit the class
        raise PublishError(f"{kind}.from_spec failed on the published spec: {type(err).__name__}: {err}") from err


_FACTORIES: set[Callable[..., Any]] = {torch.empty, torch.zeros, torch.ones, torch.rand, torch.randn, torch.full}
_PROBE_NUMEL = 4096  # tensors larger than this are created on the meta device while probing a spec


class _LargeTensorsOnMeta(TorchFunctionMode):
    """Create every tensor of more than :data:`_PROBE_NUMEL` entries (without an explicit device) on ``meta``: no memory."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is None:
            size = args[0] if args and isinstance(args[0], (tuple, list, torch.Size)) else args
            if func is torch.full:
                size = args[0] if args else kwargs.get("size", ())
            try:
                numel = math.prod(int(n) for n in size)
            except (TypeError, ValueError):
                numel = 0
            if numel > _PROBE_NUMEL:
                kwargs["device"] = "meta"
        return func(*args, **kwargs)


def state_shapes_without_memory(entry: Mapping[str, Any]) -> dict[str, tuple[int, ...]] | None:
    """Shapes of the ``state_dict`` of the module :func:`build_module` would build from ``entry``, without allocating it.

    The module is built with every tensor of more than 4096 entries on torch's ``meta``
    device (no storage), so a spec asking for a huge network costs nothing here. Returns
    ``None`` when the module cannot be built that way (its ``__init__`` computes with a large
    tensor) or its spec is rejected; the caller then checks the shapes after the real build.
    """
    cls = registered_class(entry.get("kind") if isinstance(entry, Mapping) else None)
    if cls is None:
        return None  # the real build names the unknown kind
    try:
        with _LargeTensorsOnMeta():
            probe = cls.from_spec(entry.get("spec"))
        return {name: tuple(t.shape) for name, t in probe.state_dict().items()}
    except Exception:  # noqa: BLE001 - not buildable without memory, or a bad spec: the real build reports it
        return None
