r"""How work travels to other processes: by name and JSON options, never as pickled closures.

A worker process (a ``concurrent.futures`` process, a Dask worker on another machine) must
rebuild the simulator or the training recipe it runs. sbilab sends a **reference** and
**JSON options**, and the worker imports and calls:

* a registered toy by name — ``"gaussian"``, ``"resonance"`` (see
  :data:`sbilab.simulators.TOYS`) — built with :func:`~sbilab.simulators.build_toy`;
* anything else by an importable ``"package.module:attr"`` reference (``attr`` may be dotted,
  ``"pkg.sims:Detector.default"``), called with the options as keyword arguments.

What a user's simulator needs to be sent (the same holds for a replica farm's recipe):

1. It lives in a module the workers can import by name: an installed package, or a file on
   the workers' ``PYTHONPATH`` (for a Dask cluster: on every worker machine). Not
   ``__main__`` (a script or notebook), not a function defined inside another function, not
   a lambda held in a variable.
2. ``factory(**options)`` builds it, with ``options`` made of JSON values (numbers, strings,
   booleans, lists, dicts): file paths rather than open files, seeds rather than generators.
3. It is a :class:`~sbilab.simulators.Simulator` whose randomness comes only from the
   ``generator`` passed to ``sample`` — then the events do not depend on which worker ran
   which chunk.

This is what sbi's joblib fan-out lacks (sbi issue #377: simulators that fail to pickle).

Example:
    >>> spec = SimulatorSpec("gaussian", {"sigma_x": 0.5})
    >>> type(spec.build()).__name__, SimulatorSpec.from_dict(spec.to_dict()) == spec
    ('GaussianLatent', True)
    >>> SimulatorSpec("sbilab.simulators.toys:Resonance").build().name
    'Resonance'
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..exceptions import ConfigError
from ..simulators.registry import TOYS, build_toy

__all__ = ["SimulatorSpec", "resolve_reference", "check_json"]

_REFERENCE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_HOW = ("Put it in an importable module (an installed package or a file on the workers' PYTHONPATH) and pass "
        "'module:attr' with JSON options, or a registered toy name; see sbilab.distributed.specs.")


def check_json(options: Any, where: str) -> dict[str, Any]:
    """``options`` as a plain dict after a JSON round trip (what a worker will receive).

    Raises:
        ConfigError: ``options`` is not a mapping of JSON values (the message names the value).
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}: options must be a dict of JSON values, got {type(options).__name__}.")
    try:
        text = json.dumps(dict(options), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"{where}: options {dict(options)!r} are not JSON ({err}); workers receive options as JSON: pass numbers, "
            "strings, lists and dicts (a file path instead of an open file, a seed instead of a generator)."
        ) from None
    return json.loads(text)


def resolve_reference(reference: str, where: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute.

    Raises:
        ConfigError: the reference is malformed, names ``__main__``, or does not import.
    """
    if not isinstance(reference, str) or not _REFERENCE.match(reference):
        raise ConfigError(f"{where}: {reference!r} is not a 'package.module:attr' reference. {_HOW}")
    module_name, attr = reference.split(":")
    if module_name.split(".")[0] in ("__main__", "__mp_main__"):
        raise ConfigError(f"{where}: {reference!r} lives in __main__ (a script or notebook), which other processes cannot import. {_HOW}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"{where}: cannot import module {module_name!r} of {reference!r} ({err}). {_HOW}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{where}: module {module_name!r} has no attribute {attr!r}. {_HOW}") from None
    return obj


@dataclass(frozen=True)
class SimulatorSpec:
    """What a worker needs to build a simulator: a toy name or ``"module:attr"``, and JSON options.

    Attributes:
        target: A registered toy name (``"gaussian"``) or an importable ``"package.module:attr"``
            naming a Simulator class or a function returning a Simulator.
        options: Keyword arguments of the toy or factory (JSON values only).

    Raises:
        ConfigError: unknown toy, malformed or unimportable reference, non-JSON options.
    """

    target: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"SimulatorSpec({self.target!r})"
        object.__setattr__(self, "options", check_json(self.options, where))
        if not isinstance(self.target, str) or not self.target:
            raise ConfigError(f"SimulatorSpec: target must be a toy name or 'module:attr', got {self.target!r}. {_HOW}")
        if ":" not in self.target and self.target not in TOYS:
            raise ConfigError(f"{where}: {self.target!r} is no registered toy ({sorted(TOYS)}) and no 'module:attr' reference. {_HOW}")

    @property
    def is_toy(self) -> bool:
        return ":" not in self.target

    def build(self) -> Any:
        """The simulator (a registered toy, or ``factory(**options)`` of the reference).

        Raises:
            ConfigError: the options do not fit, or the factory does not return a Simulator.
        """
        where = f"SimulatorSpec({self.target!r})"
        if self.is_toy:
            return build_toy(self.target, self.options, where=where)
        factory = resolve_reference(self.target, where)
        if not callable(factory):
            raise ConfigError(f"{where}: {self.target!r} is a {type(factory).__name__}, not a class or function building a simulator. {_HOW}")
        try:
            simulator = factory(**self.options)
        except TypeError as err:
            raise ConfigError(f"{where}: options {dict(self.options)} do not fit {self.target!r} ({err}).") from None
        if not (callable(getattr(simulator, "sample", None)) and hasattr(simulator, "space")):
            raise ConfigError(
                f"{where}: {self.target!r} returned a {type(simulator).__name__}, not a Simulator (sample(theta, generator) "
                "and a parameter space); return an sbilab.simulators.Simulator, e.g. a CallableSimulator."
            )
        return simulator

    def to_dict(self) -> dict[str, Any]:
        """``{"target": ..., "options": {...}}`` (JSON)."""
        return {"target": self.target, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SimulatorSpec":
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        unknown = sorted(set(values) - {"target", "options"})
        if unknown:
            raise ConfigError(f"SimulatorSpec: unknown keys {unknown}; known: ['options', 'target'].")
        return cls(values["target"], values.get("options", {}))

    @classmethod
    def of(cls, simulator: Any, options: Mapping[str, Any] | None = None) -> "SimulatorSpec":
        """A spec from what a user passes: a spec, a spec dict, a toy name or a reference string.

        Raises:
            ConfigError: ``simulator`` is an object (a Simulator instance, a function, a closure):
                those cannot be sent to workers; the message says what to pass instead.
        """
        if isinstance(simulator, cls):
            if options:
                raise ConfigError("simulate: options are given twice (in the SimulatorSpec and as options=); give them once.")
            return simulator
        if isinstance(simulator, Mapping):
            return cls.from_dict(simulator)
        if isinstance(simulator, str):
            return cls(simulator, options or {})
        kind = type(simulator).__name__
        name = getattr(simulator, "__qualname__", None) or kind
        raise ConfigError(
            f"simulate: the simulator is a {kind} object ({name}); objects are not sent to worker processes (closures and "
            f"open resources do not pickle, and a Dask worker on another machine could not rebuild it). Pass a registered toy "
            f"name, e.g. 'gaussian', or a 'module:attr' reference to the class or factory with JSON options, e.g. "
            f"SimulatorSpec('mypackage.sims:{kind}', {{...}}). {_HOW}"
        )
