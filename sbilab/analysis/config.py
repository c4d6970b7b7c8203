r"""Analysis configurations: one ``analysis.toml`` per folder in ``analyses/``.

A configuration is read once into frozen dataclasses; every problem (missing file, TOML
syntax, unknown key, wrong type, value out of range) raises :class:`ConfigError` naming the
file, the key and what to write instead. This is the string boundary: names of toys,
pipelines and losses are looked up in their registries here
(:data:`~sbilab.simulators.registry.TOYS`, :data:`~sbilab.analysis.run.PIPELINES`,
:func:`~sbilab.estimators.losses.loss_info`).

Sections:

``[analysis]``   ``name`` (also the output folder ``out/<name>``: one folder name, no ``/`` or
                 ``..``), ``description``, ``kind``: the registered pipeline that runs it.
``[simulator]``  ``toy`` (a registered toy) and the toy's options (keywords of its constructor).
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
import inspect
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
    "output_folder",
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
    """Fits and profile scans: ``[fit]`` (confidence level, points of each scan, its half-width in
    errors of the exact fit, and ``max_outside``: the largest weighted fraction of observed events
    allowed outside the learned estimator's training support before the fit is reported not valid,
    :class:`~sbilab.stats.UnbinnedLikelihood`)."""

    cl: float = 0.683
    scan_points: int = 41
    scan_sigmas: float = 3.0
    max_outside: float = 0.0
    nonnegative: ClassVar[tuple[str, ...]] = ("max_outside",)

    def check(self, where: str) -> None:
        if not 0.0 < self.cl < 1.0:
            raise ConfigError(f"{where} cl = {self.cl} must lie in (0, 1), e.g. 0.683.")
        if not 0.0 <= self.max_outside <= 1.0:
            raise ConfigError(f"{where} max_outside = {self.max_outside} must lie in [0, 1] (0: no observed event may lie outside "
                              "the estimator's training support; 1: the check is off).")


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


def _check_parameter_names(toy: str, options: dict[str, Any], truth: dict[str, Any], nuisances: dict[str, Any], path: Path) -> None:
    """ConfigError unless ``[truth]`` names exactly the toy's parameters and ``[nuisances]`` only some of them.

    Only toys that are :class:`~sbilab.simulators.Simulator` subclasses have a parameter space to
    check against; other registered toys (e.g. the anomaly toy, whose truth is a signal fraction
    its pipeline reads) are checked by their pipeline.
    """
    from ..exceptions import SbilabError
    from ..simulators.base import Simulator
    from ..simulators.registry import TOYS, build_toy

    if not (isinstance(TOYS[toy], type) and issubclass(TOYS[toy], Simulator)):
        return

    try:
        names = list(build_toy(toy, options, where=f"{path}: [simulator]").space.names)
    except ConfigError:
        raise
    except SbilabError as err:
        raise ConfigError(f"{path}: [simulator] options {options} are not valid for the {toy!r} toy: {err}") from None
    if sorted(truth) != sorted(names):
        raise ConfigError(f"{path}: [truth] gives {sorted(truth)} but the {toy!r} toy has parameters {names}; give one value for each.")
    unknown = sorted(set(nuisances) - set(names))
    if unknown:
        raise ConfigError(f"{path}: [nuisances] names {unknown}, which are not parameters of the {toy!r} toy ({names}).")


_CORE = {"analysis", "simulator", "truth", "observed", "estimator", "training", "fit", "quick", "nuisances"}
_ANALYSIS_KEYS = ("name", "description", "kind")


def _folder_name(value: Any, where: str) -> str:
    """``value`` if it is one plain folder name (no separators, not ``.`` or ``..``), else ConfigError."""
    if not isinstance(value, str) or not value.strip() or value in (".", "..") or any(c in value for c in "/\\\0") \
            or Path(value).name != value:
        raise ConfigError(f"{where} name = {value!r}; the name is also the output folder out/<name>, so it must be one folder "
                          "name without '/', '\\' or '..', e.g. name = \"resonance_mass\".")
    return value


def output_folder(root: str | Path, name: str) -> Path:
    """The output folder ``root/name`` of an analysis, confined to ``root``.

    Raises:
        ConfigError: ``name`` is not one plain folder name, or ``root/name`` resolves outside
            ``root`` (e.g. through a symbolic link).
    """
    root = Path(root)
    folder = root / _folder_name(name, "[analysis]")
    if not folder.resolve().is_relative_to(root.resolve()):
        raise ConfigError(f"the output folder {folder} resolves to {folder.resolve()}, outside {root.resolve()}; "
                          "remove the symbolic link or give --out explicitly.")
    return folder


def _check_toy_options(toy: str, options: dict[str, Any], path: Path) -> None:
    """ConfigError unless ``options`` are keywords the registered toy's constructor takes."""
    from ..simulators.registry import TOYS

    try:
        signature = inspect.signature(TOYS[toy])
    except (TypeError, ValueError):  # a constructor without a signature: the toy reports at build time
        return
    try:
        signature.bind(**options)
    except TypeError as err:
        allowed = [n for n, p in signature.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        raise ConfigError(f"{path}: [simulator] options {sorted(options)} do not fit the {toy!r} toy ({err}); "
                          f"its options are {allowed}.") from None


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
    for section in ("analysis", "simulator", "truth", "nuisances", "quick"):
        if section in raw and not isinstance(raw[section], dict):
            raise ConfigError(f"{path}: {section} must be a section [{section}], not a value.")
    unknown_keys = sorted(set(raw["analysis"]) - set(_ANALYSIS_KEYS))
    if unknown_keys:
        raise ConfigError(f"{path}: unknown key(s) {unknown_keys} in [analysis]; allowed keys are {list(_ANALYSIS_KEYS)}.")
    for key in ("description", "kind"):
        if key in raw["analysis"] and not isinstance(raw["analysis"][key], str):
            raise ConfigError(f"{path}: [analysis] {key} = {raw['analysis'][key]!r} must be a string.")
    name = _folder_name(raw["analysis"].get("name", path.resolve().parent.name), f"{path}: [analysis]")
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
    _check_toy_options(toy, simulator, path)
    truth = raw["truth"]
    if not truth or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in truth.values()):
        raise ConfigError(f"{path}: [truth] must give a number for every parameter, e.g. M = 100.0.")
    _check_parameter_names(toy, simulator, truth, raw.get("nuisances", {}), path)
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
        name=name,
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
