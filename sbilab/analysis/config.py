r"""Analysis configurations: one ``analysis.toml`` per folder in ``analyses/``.

A configuration is read once into frozen dataclasses; every problem (missing file, TOML
syntax, unknown key, wrong type, value out of range) raises :class:`ConfigError` naming the
file, the key and what to write instead.

Sections: ``[analysis]`` (``name``, ``description``, ``kind``: which pipeline runs it, see
:data:`KINDS`), ``[simulator]`` (``toy`` and its options), ``[truth]`` (every parameter, nuisances
included), ``[observed]``, ``[training]``, ``[fit]``, ``[nuisances]`` (Gaussian constraints,
``name = {mean = 2.0, sigma = 0.2}``), ``[eft]`` (the ``eft_limits`` pipeline), ``[search]`` (the
``search`` pipeline), ``[surrogate]`` (the ``surrogate`` pipeline) and ``[quick]``: overrides of
``[training]``, ``[fit]``, ``[eft]``, ``[search]`` or ``[surrogate]`` keys (and ``observed_events``)
for ``--quick`` runs. Key names are unique across
these sections, so a ``[quick]`` key names its section unambiguously.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError

__all__ = [
    "AnalysisConfig",
    "TrainingSection",
    "ObservedSection",
    "FitSection",
    "EftSection",
    "SearchSection",
    "SurrogateSection",
    "load_config",
    "TOYS",
    "METHODS",
    "KINDS",
]

TOYS = ("gaussian", "resonance", "resonance_background", "morphing")
METHODS = ("carl", "rolr", "rascal", "alice", "alices", "cascal", "scandal", "nde")
KINDS = ("measurement", "eft_limits", "search", "surrogate")


@dataclass(frozen=True)
class TrainingSection:
    method: str = "alices"
    n_simulations: int = 100_000
    epochs: int = 40
    batch_size: int = 512
    learning_rate: float = 2e-3
    alpha: float = 0.1
    hidden: tuple[int, ...] = (100, 100)
    activation: str = "silu"
    ensemble: int = 1
    patience: int = 8
    seed: int = 1


@dataclass(frozen=True)
class ObservedSection:
    n_events: int = 1000
    seed: int = 2026


@dataclass(frozen=True)
class FitSection:
    cl: float = 0.683
    scan_points: int = 41
    scan_sigmas: float = 3.0


@dataclass(frozen=True)
class EftSection:
    """Options of the ``eft_limits`` pipeline (:mod:`sbilab.analysis.eft`).

    Attributes:
        luminosity: Integrated luminosity (pb⁻¹); the expected yield is ``luminosity * σ(θ)``.
        histogram_bins: Bins of the observable's histogram: fixed width on [0, histogram_max], the last an overflow bin.
        histogram_max: Upper edge of the last fixed-width bin of the observable.
        score_bins: Bins of the SALLINO histogram of the score projection (equal population at the reference).
        template_events: Simulated events at the reference that fill the morphed templates.
        asimov_events: Size of the weighted Asimov sample of the unbinned fits.
        score_simulations: Training events of the SALLY score estimator.
        cls: Confidence levels of the intervals.
    """

    luminosity: float = 300.0
    histogram_bins: int = 8
    histogram_max: float = 175.0
    score_bins: int = 8
    template_events: int = 200_000
    asimov_events: int = 20_000
    score_simulations: int = 50_000
    cls: tuple[float, ...] = (0.683, 0.95)


@dataclass(frozen=True)
class SearchSection:
    r"""Options of the ``search`` pipeline (:mod:`sbilab.analysis.search`): a binned resonance search with pyhf.

    ``[truth]`` is the signal hypothesis; the observed counts are Poisson draws seeded by
    ``[observed] seed`` (``[observed] n_events`` is not used); ``[training]`` configures the
    signal-vs-background classifier (``method = "carl"``).

    Attributes:
        signal_events: Expected signal events S in the window at the nominal resolution for
            :math:`\mu = 1` (the signal yield is :math:`\mu S`).
        background_events: Expected background events B in the window.
        mu_true: Signal strength at which the observed data are drawn (0: background only).
        x_bins: Fixed-width bins of the raw observable x over the window.
        observable_bins: Bins of the classifier and exact-ratio observables, with equal expected
            background per bin.
        mc_events: Simulated events per template sample (one sample at each of the nominal, low
            and high resolution; the process label splits each into signal and background).
            Their finite number is the MC statistical uncertainty (``staterror``).
        background_norm_uncertainty: Relative background normalisation uncertainty (``normsys``).
        resolution_uncertainty: Relative shift of the detector resolution for the signal-shape
            templates (``histosys`` at :math:`\sigma_\mathrm{det}(1 \mp u)`).
        limit_cl: Confidence level of the CLs upper limits.
        mu_max: Upper end of the scan of the signal strength.
        mu_points: Points of the scan on (0, mu_max].
    """

    signal_events: float = 75.0
    background_events: float = 1000.0
    mu_true: float = 0.0
    x_bins: int = 10
    observable_bins: int = 10
    mc_events: int = 200_000
    background_norm_uncertainty: float = 0.1
    resolution_uncertainty: float = 0.1
    limit_cl: float = 0.95
    mu_max: float = 3.0
    mu_points: int = 31


@dataclass(frozen=True)
class SurrogateSection:
    r"""Options of the ``surrogate`` pipeline (:mod:`sbilab.analysis.surrogate`): the resonance measurement with its
    detector stage replaced by a learned :class:`~sbilab.surrogates.StageSurrogate`.

    ``[training]`` gives ``batch_size``, ``learning_rate`` and ``seed`` of every network; ``[truth]``,
    ``[observed]`` and ``[fit] cl`` the measurement.

    Attributes:
        pairs: Paired (truth, reco, pass) simulations the stage is trained on (θ over the toy's space).
        flow_transforms, flow_hidden, flow_bins: The stage density (a spline flow, :class:`~sbilab.nets.flows.FlowSpec`).
        stage_epochs: Epochs of the density (the best validation epoch is kept).
        efficiency_epochs: Epochs of the efficiency classifier.
        classifier_hidden: Hidden widths of the efficiency, refinement and two-sample classifiers.
        refine_events: Events of each sample (surrogate, original) training the refinement classifier.
        refine_epochs: Its epochs.
        validation_events: Held-out events of each sample for the validation.
        validation_epochs: Epochs of each two-sample classifier.
        auc_resolution: Largest acceptable statistical error of a two-sample AUC.
        auc_regions: Quantile regions of each parameter with their own AUC (0: none).
        toys: Toy experiments (``[observed] n_events`` each) for widths and coverage.
        table_points: Points of the tabulated likelihood features over the window.
    """

    pairs: int = 100_000
    flow_transforms: int = 3
    flow_hidden: tuple[int, ...] = (64, 64)
    flow_bins: int = 8
    stage_epochs: int = 15
    efficiency_epochs: int = 20
    classifier_hidden: tuple[int, ...] = (64, 64)
    refine_events: int = 100_000
    refine_epochs: int = 20
    validation_events: int = 60_000
    validation_epochs: int = 10
    auc_resolution: float = 0.01
    auc_regions: int = 2
    toys: int = 200
    table_points: int = 2001


@dataclass(frozen=True)
class AnalysisConfig:
    """A complete analysis: which pipeline, simulator, truth, observed sample, training, fit."""

    name: str
    path: Path
    toy: str
    toy_options: dict[str, Any]
    truth: dict[str, float]
    kind: str = "measurement"
    observed: ObservedSection = ObservedSection()
    training: TrainingSection = TrainingSection()
    fit: FitSection = FitSection()
    eft: EftSection = EftSection()
    search: SearchSection = SearchSection()
    surrogate: SurrogateSection = SurrogateSection()
    quick: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    nuisances: dict[str, tuple[float, float]] = field(default_factory=dict)

    def quick_version(self) -> "AnalysisConfig":
        """The configuration with the ``[quick]`` overrides applied to ``[training]``, ``[fit]``, ``[eft]``, ``[search]``,
        ``[surrogate]`` and ``[observed]``."""
        quick = dict(self.quick)
        observed = quick.pop("observed_events", None)
        sections = {}
        for attr, cls in _QUICK_SECTIONS:
            keys = {f.name for f in dataclasses.fields(cls)}
            values = {k: quick.pop(k) for k in list(quick) if k in keys}
            sections[attr] = _section(cls, {**dataclasses.asdict(getattr(self, attr)), **values}, self.path, "quick")
        new = dataclasses.replace(self, **sections)
        if observed is not None:
            new = dataclasses.replace(new, observed=dataclasses.replace(self.observed, n_events=int(observed)))
        return new


_QUICK_SECTIONS = (("training", TrainingSection), ("fit", FitSection), ("eft", EftSection), ("search", SearchSection),
                   ("surrogate", SurrogateSection))
_QUICK_KEYS = [f.name for _, cls in _QUICK_SECTIONS for f in dataclasses.fields(cls)]
assert len(_QUICK_KEYS) == len(set(_QUICK_KEYS)), "a [quick] key would be ambiguous between sections"
_MAY_BE_NEGATIVE = ("seed", "alpha", "patience")
_MAY_BE_ZERO = ("mu_true", "auc_regions")


def _convert(value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        return bool(value)
    if isinstance(default, int):
        if isinstance(value, float) and not value.is_integer():
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


def _section(cls: type, values: dict[str, Any], path: Path, where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} in [{where}]; allowed keys are {sorted(known)}.")
    out: dict[str, Any] = {}
    defaults = cls()
    for key, value in values.items():
        default = getattr(defaults, key)
        try:
            value = _convert(value, default)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{path}: [{where}] {key} = {value!r} has the wrong type; expected {type(default).__name__} like {default!r}."
            ) from None
        numbers = value if isinstance(value, tuple) else (value,)
        numeric = [v for v in numbers if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if key in _MAY_BE_ZERO and any(v < 0 for v in numeric):
            raise ConfigError(f"{path}: [{where}] {key} = {value!r} must be >= 0.")
        if key not in _MAY_BE_NEGATIVE + _MAY_BE_ZERO and any(v <= 0 for v in numeric):
            raise ConfigError(f"{path}: [{where}] {key} = {value!r} must be positive.")
        out[key] = value
    return cls(**out)


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


def _check_search(search: SearchSection, path: Path, where: str) -> None:
    """Ranges of the ``[search]`` keys that the generic type and sign checks do not cover."""
    for key in ("background_norm_uncertainty", "resolution_uncertainty", "limit_cl"):
        value = getattr(search, key)
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{path}: [{where}] {key} = {value!r} must lie in (0, 1), e.g. {getattr(SearchSection(), key)!r}.")
    if search.mu_points < 2:
        raise ConfigError(f"{path}: [{where}] mu_points = {search.mu_points} must be at least 2, e.g. 31.")


def load_config(folder_or_file: str | Path) -> AnalysisConfig:
    """Read ``analysis.toml`` from an analysis folder (or the file itself).

    Raises:
        ConfigError: the folder or file is missing, the TOML is malformed, or a section,
            key or value is wrong. The message names the file and the key.
    """
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
    allowed = {"analysis", "simulator", "truth", "observed", "training", "fit", "quick", "nuisances", "eft", "search", "surrogate"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; allowed sections are {sorted(allowed)}.")
    for required in ("analysis", "simulator", "truth"):
        if required not in raw:
            raise ConfigError(f"{path}: missing section [{required}].")
    kind = raw["analysis"].get("kind", "measurement")
    if kind not in KINDS:
        raise ConfigError(f"{path}: [analysis] kind = {kind!r}; choose one of {list(KINDS)}.")
    simulator = dict(raw["simulator"])
    toy = simulator.pop("toy", None)
    if toy not in TOYS:
        raise ConfigError(f"{path}: [simulator] toy = {toy!r}; choose one of {list(TOYS)}.")
    if kind == "eft_limits" and toy != "morphing":
        raise ConfigError(f"{path}: [analysis] kind = 'eft_limits' needs [simulator] toy = 'morphing', got {toy!r}.")
    if kind == "surrogate" and toy != "resonance":
        raise ConfigError(f"{path}: [analysis] kind = 'surrogate' replaces the detector stage of the 'resonance' toy; "
                          f"set [simulator] toy = 'resonance' (got {toy!r}).")
    if kind == "search" and toy != "resonance_background":
        raise ConfigError(f"{path}: [analysis] kind = 'search' needs [simulator] toy = 'resonance_background', got {toy!r}.")
    truth = raw["truth"]
    if not truth or not all(isinstance(v, (int, float)) for v in truth.values()):
        raise ConfigError(f"{path}: [truth] must give a number for every parameter, e.g. M = 100.0.")
    training = _section(TrainingSection, raw.get("training", {}), path, "training")
    if training.method not in METHODS:
        raise ConfigError(f"{path}: [training] method = {training.method!r}; choose one of {list(METHODS)}.")
    fit = _section(FitSection, raw.get("fit", {}), path, "fit")
    if not 0.0 < fit.cl < 1.0:
        raise ConfigError(f"{path}: [fit] cl = {fit.cl} must lie in (0, 1), e.g. 0.683.")
    eft = _section(EftSection, raw.get("eft", {}), path, "eft")
    if not all(0.0 < c < 1.0 for c in eft.cls):
        raise ConfigError(f"{path}: [eft] cls = {list(eft.cls)}; every confidence level must lie in (0, 1), e.g. [0.683, 0.95].")
    search = _section(SearchSection, raw.get("search", {}), path, "search")
    _check_search(search, path, "search")
    surrogate = _section(SurrogateSection, raw.get("surrogate", {}), path, "surrogate")
    if kind == "search" and training.method != "carl":
        raise ConfigError(f"{path}: [analysis] kind = 'search' trains a signal-vs-background classifier; "
                          f"set [training] method = 'carl' (got {training.method!r}).")
    quick = dict(raw.get("quick", {}))
    rest = {k: v for k, v in quick.items() if k != "observed_events"}
    for attr, cls in _QUICK_SECTIONS:
        keys = {f.name for f in dataclasses.fields(cls)}
        section = _section(cls, {k: rest.pop(k) for k in list(rest) if k in keys}, path, "quick")
        if cls is SearchSection:
            _check_search(section, path, "quick")
    if rest:
        allowed = sorted({f.name for _, cls in _QUICK_SECTIONS for f in dataclasses.fields(cls)} | {"observed_events"})
        raise ConfigError(f"{path}: unknown key(s) {sorted(rest)} in [quick]; allowed keys are {allowed}.")
    return AnalysisConfig(
        name=str(raw["analysis"].get("name", path.parent.name)),
        description=str(raw["analysis"].get("description", "")),
        kind=kind,
        path=path,
        toy=toy,
        toy_options=simulator,
        truth={k: float(v) for k, v in truth.items()},
        observed=_section(ObservedSection, raw.get("observed", {}), path, "observed"),
        training=training,
        fit=fit,
        eft=eft,
        search=search,
        surrogate=surrogate,
        quick=quick,
        nuisances=_nuisances(dict(raw.get("nuisances", {})), path),
    )
