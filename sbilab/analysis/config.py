r"""Analysis configurations: one ``analysis.toml`` per folder in ``analyses/``.

A configuration is read once into frozen dataclasses; every problem (missing file, TOML
syntax, unknown key, wrong type, value out of range) raises :class:`ConfigError` naming the
file, the key and what to write instead. This is the string boundary: names of toys,
pipelines and losses are looked up in their registries here
(:data:`~sbilab.simulators.registry.TOYS`, :data:`~sbilab.analysis.run.PIPELINES`,
:func:`~sbilab.estimators.losses.loss_info`).

Sections:

``[analysis]``   ``name``, ``description``, ``kind``: the registered pipeline that runs it.
``[simulator]``  ``toy`` (a registered toy) and the toy's options.
``[truth]``      every parameter, nuisances included.
``[observed]``   the observed sample (:class:`ObservedSection`).
``[estimator]``  what is trained (:class:`EstimatorSection`): ``method`` (a registered loss),
                 ``n_simulations``, ``alpha``, ``hidden``, ``activation``.
``[training]``   how it is trained: the options of :func:`~sbilab.training.fit` themselves,
                 a :class:`~sbilab.training.TrainingConfig` with its defaults. TOML has no
                 null: write ``false`` for an option that may be ``None`` (``patience = false``:
                 never stop early; ``clip_norm = false``: no clipping).
``[fit]``        profile scans (:class:`FitSection`).
``[nuisances]``  Gaussian constraints, ``name = {mean = 2.0, sigma = 0.2}``.
``[<pipeline>]`` the pipeline's own section, if it registered one (``[eft]``, ``[search]``).
``[quick]``      overrides of ``[estimator]``, ``[training]``, ``[fit]`` or the pipeline's
                 section keys (and ``observed_events``) for ``--quick`` runs. Key names are
                 unique across these sections, so a ``[quick]`` key names its section.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..exceptions import ConfigError
from ..training.config import TrainingConfig
from .run import PIPELINES

__all__ = [
    "AnalysisConfig",
    "EstimatorSection",
    "ObservedSection",
    "FitSection",
    "load_config",
    "section_from_dict",
]

_ESTIMATOR_KINDS = ("ratio", "likelihood")  # what the pipelines' train_ratio can train


@dataclass(frozen=True)
class EstimatorSection:
    """What is trained: ``[estimator]``.

    Attributes:
        method: A registered loss (:func:`~sbilab.estimators.losses.loss_info`) that trains a
            ratio or likelihood estimator, e.g. ``"alices"``, ``"carl"``, ``"nde"``.
        n_simulations: Simulated training events.
        alpha: Weight of the score term, for the losses that take it (RASCAL, ALICES, CASCAL, SCANDAL).
        hidden: Hidden widths of the network.
        activation: Activation of the network (``silu``, ``tanh``, ...).
    """

    method: str = "alices"
    n_simulations: int = 100_000
    alpha: float = 0.1
    hidden: tuple[int, ...] = (100, 100)
    activation: str = "silu"
    signed: ClassVar[tuple[str, ...]] = ("alpha",)

    def check(self, where: str) -> None:
        from ..estimators.losses import LOSSES, loss_info

        choices = sorted(n for n in LOSSES if loss_info(n).estimator in _ESTIMATOR_KINDS)
        if self.method not in choices:
            raise ConfigError(f"{where} method = {self.method!r}; choose one of {choices}.")


@dataclass(frozen=True)
class ObservedSection:
    """The observed sample: ``[observed]`` (``n_events`` drawn at the truth with generator seed ``seed``)."""

    n_events: int = 1000
    seed: int = 2026
    signed: ClassVar[tuple[str, ...]] = ("seed",)


@dataclass(frozen=True)
class FitSection:
    """Profile scans: ``[fit]`` (confidence level, points of each scan, its half-width in errors of the exact fit)."""

    cl: float = 0.683
    scan_points: int = 41
    scan_sigmas: float = 3.0

    def check(self, where: str) -> None:
        if not 0.0 < self.cl < 1.0:
            raise ConfigError(f"{where} cl = {self.cl} must lie in (0, 1), e.g. 0.683.")


@dataclass(frozen=True)
class AnalysisConfig:
    """A complete analysis: which pipeline, simulator, truth, observed sample, estimator, training, fit.

    The pipeline's own section is in ``sections`` and also reads as an attribute
    (``config.eft``, ``config.search``).
    """

    name: str
    path: Path
    toy: str
    toy_options: dict[str, Any]
    truth: dict[str, float]
    kind: str = "measurement"
    observed: ObservedSection = ObservedSection()
    estimator: EstimatorSection = EstimatorSection()
    training: TrainingConfig = TrainingConfig()
    fit: FitSection = FitSection()
    sections: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    nuisances: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or section {name!r}")

    def quick_version(self) -> "AnalysisConfig":
        """The configuration with the ``[quick]`` overrides applied."""
        quick = dict(self.quick)
        observed = quick.pop("observed_events", None)
        changes: dict[str, Any] = {}
        sections = dict(self.sections)
        for attr, cls in _quick_sections(self.kind):
            keys = {f.name for f in dataclasses.fields(cls)}
            values = {k: quick.pop(k) for k in list(quick) if k in keys}
            current = sections[attr] if attr in sections else getattr(self, attr)
            new = section_from_dict(cls, {**_as_dict(current), **values}, self.path, "quick")
            if attr in sections:
                sections[attr] = new
            else:
                changes[attr] = new
        new_config = dataclasses.replace(self, sections=sections, **changes)
        if observed is not None:
            new_config = dataclasses.replace(new_config, observed=dataclasses.replace(self.observed, n_events=int(observed)))
        return new_config


def _as_dict(section: Any) -> dict[str, Any]:
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


def _quick_sections(kind: str) -> list[tuple[str, type]]:
    """The sections ``[quick]`` may override for pipeline ``kind``; their keys are unique."""
    out: list[tuple[str, type]] = [("estimator", EstimatorSection), ("training", TrainingConfig), ("fit", FitSection)]
    own = PIPELINES[kind].section
    if own is not None:
        out.append(own)
    keys = [f.name for _, cls in out for f in dataclasses.fields(cls)]
    assert len(keys) == len(set(keys)), f"a [quick] key would be ambiguous between the sections of pipeline {kind!r}"
    return out


def _optional(cls: type, name: str) -> bool:
    """Whether field ``name`` of ``cls`` may be ``None`` (written ``false`` in TOML)."""
    return "None" in str({f.name: f.type for f in dataclasses.fields(cls)}[name])


def _convert(value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()) or isinstance(value, str):
            raise TypeError
        return int(value)
    if isinstance(default, float):
        if isinstance(value, (str, bool)):
            raise TypeError
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return tuple(_convert(v, default[0]) for v in value)
    if isinstance(default, str) and not isinstance(value, str):
        raise TypeError
    return value


def section_from_dict(cls: type, values: dict[str, Any], path: Path, name: str) -> Any:
    """Build the section dataclass ``cls`` from the TOML ``values`` of section ``[name]`` of the file ``path``.

    Values are converted to the type of the field's default (lists to tuples); numbers must be
    positive unless the class lists the field in ``signed`` (any sign) or ``nonnegative``;
    ``false`` stands for ``None`` in fields that may be ``None``; a class with a ``check(where)``
    method validates the rest. A :class:`~sbilab.training.TrainingConfig` validates itself.

    Raises:
        ConfigError: naming the file, the section and the key.
    """
    where = f"{path}: [{name}]"
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} in [{name}]; allowed keys are {sorted(known)}.")
    defaults = cls()
    signs = cls is not TrainingConfig  # TrainingConfig checks its own ranges (some options may be 0)
    signed = getattr(cls, "signed", ())
    out: dict[str, Any] = {}
    for key, value in values.items():
        default = getattr(defaults, key)
        if value is False and _optional(cls, key):
            out[key] = None
            continue
        if value is None or default is None:
            out[key] = value
            continue
        try:
            value = _convert(value, default)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} {key} = {value!r} has the wrong type; expected {type(default).__name__} like {default!r}.") from None
        numbers = value if isinstance(value, tuple) else (value,)
        numeric = [v for v in numbers if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if signs and key not in signed and any(v <= 0 for v in numeric):
            nonnegative = getattr(cls, "nonnegative", ())
            if key not in nonnegative:
                raise ConfigError(f"{where} {key} = {value!r} must be positive.")
            if any(v < 0 for v in numeric):
                raise ConfigError(f"{where} {key} = {value!r} must be >= 0.")
        out[key] = value
    try:
        section = cls(**out)
    except ConfigError as err:  # TrainingConfig validates itself
        raise ConfigError(f"{where} {str(err).removeprefix('fit: ')}") from None
    if hasattr(section, "check"):
        section.check(where)
    return section


def _nuisances(raw: dict[str, Any], path: Path) -> dict[str, tuple[float, float]]:
    out = {}
    for name, spec in raw.items():
        if isinstance(spec, dict) and set(spec) == {"mean", "sigma"}:
            mean, sigma = spec["mean"], spec["sigma"]
        elif isinstance(spec, (list, tuple)) and len(spec) == 2:
            mean, sigma = spec
        else:
            raise ConfigError(f"{path}: [nuisances] {name} = {spec!r}; write {name} = {{ mean = 2.0, sigma = 0.2 }} (a Gaussian constraint).")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (mean, sigma)) or not sigma > 0:
            raise ConfigError(f"{path}: [nuisances] {name} needs a number mean and a positive number sigma, got {spec!r}.")
        out[str(name)] = (float(mean), float(sigma))
    return out


_CORE = {"analysis", "simulator", "truth", "observed", "estimator", "training", "fit", "quick", "nuisances"}


def load_config(folder_or_file: str | Path) -> AnalysisConfig:
    """Read ``analysis.toml`` from an analysis folder (or the file itself).

    Raises:
        ConfigError: the folder or file is missing, the TOML is malformed, or a section,
            key or value is wrong. The message names the file and the key.
    """
    from ..simulators.registry import TOYS

    path = Path(folder_or_file)
    if path.is_dir():
        path = path / "analysis.toml"
    if not path.is_file():
        raise ConfigError(
            f"No analysis configuration at {path}. An analysis is a folder with an analysis.toml; "
            "see analyses/resonance_mass/ for an example."
        )
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: malformed TOML ({err}).") from None
    for required in ("analysis", "simulator", "truth"):
        if required not in raw:
            raise ConfigError(f"{path}: missing section [{required}].")
    kind = raw["analysis"].get("kind", "measurement")
    if kind not in PIPELINES:
        raise ConfigError(f"{path}: [analysis] kind = {kind!r}; choose one of {sorted(PIPELINES)}.")
    pipeline = PIPELINES[kind]
    own = {pipeline.section[0]} if pipeline.section is not None else set()
    unknown = sorted(set(raw) - _CORE - own)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; the {kind!r} pipeline allows the sections {sorted(_CORE | own)}.")
    simulator = dict(raw["simulator"])
    toy = simulator.pop("toy", None)
    if toy not in TOYS:
        raise ConfigError(f"{path}: [simulator] toy = {toy!r}; choose one of {sorted(TOYS)}.")
    if pipeline.toys is not None and toy not in pipeline.toys:
        raise ConfigError(f"{path}: [analysis] kind = {kind!r} needs [simulator] toy = {' or '.join(map(repr, pipeline.toys))}, got {toy!r}.")
    truth = raw["truth"]
    if not truth or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in truth.values()):
        raise ConfigError(f"{path}: [truth] must give a number for every parameter, e.g. M = 100.0.")
    sections = {}
    if pipeline.section is not None:
        name, cls = pipeline.section
        sections[name] = section_from_dict(cls, raw.get(name, {}), path, name)
    quick = dict(raw.get("quick", {}))
    rest = {k: v for k, v in quick.items() if k != "observed_events"}
    for _, cls in _quick_sections(kind):
        keys = {f.name for f in dataclasses.fields(cls)}
        section_from_dict(cls, {k: rest.pop(k) for k in list(rest) if k in keys}, path, "quick")
    if rest:
        allowed = sorted({f.name for _, cls in _quick_sections(kind) for f in dataclasses.fields(cls)} | {"observed_events"})
        raise ConfigError(f"{path}: unknown key(s) {sorted(rest)} in [quick]; allowed keys are {allowed}.")
    config = AnalysisConfig(
        name=str(raw["analysis"].get("name", path.parent.name)),
        description=str(raw["analysis"].get("description", "")),
        kind=kind,
        path=path,
        toy=toy,
        toy_options=simulator,
        truth={k: float(v) for k, v in truth.items()},
        observed=section_from_dict(ObservedSection, raw.get("observed", {}), path, "observed"),
        estimator=section_from_dict(EstimatorSection, raw.get("estimator", {}), path, "estimator"),
        training=section_from_dict(TrainingConfig, raw.get("training", {}), path, "training"),
        fit=section_from_dict(FitSection, raw.get("fit", {}), path, "fit"),
        sections=sections,
        quick=quick,
        nuisances=_nuisances(dict(raw.get("nuisances", {})), path),
    )
    if pipeline.check is not None:
        pipeline.check(config)
    return config
