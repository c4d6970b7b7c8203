r"""Analysis configurations: one ``analysis.toml`` per folder in ``analyses/``.

A configuration is read once into frozen dataclasses; every problem (missing file, TOML
syntax, unknown key, wrong type, value out of range) raises :class:`ConfigError` naming the
file, the key and what to write instead. ``[quick]`` overrides ``[training]`` keys for
``--quick`` runs.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError

__all__ = ["AnalysisConfig", "TrainingSection", "ObservedSection", "FitSection", "load_config", "TOYS", "METHODS"]

TOYS = ("gaussian", "resonance", "morphing")
METHODS = ("carl", "rolr", "rascal", "alice", "alices", "cascal", "scandal", "nde")


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
class AnalysisConfig:
    """A complete measurement: simulator, truth, observed sample, training, fit."""

    name: str
    path: Path
    toy: str
    toy_options: dict[str, Any]
    truth: dict[str, float]
    observed: ObservedSection = ObservedSection()
    training: TrainingSection = TrainingSection()
    fit: FitSection = FitSection()
    quick: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    background: dict[str, Any] = field(default_factory=dict)
    nuisances: dict[str, Any] = field(default_factory=dict)

    def quick_version(self) -> "AnalysisConfig":
        """The configuration with ``[quick]`` overrides applied to ``[training]`` (and ``observed``)."""
        training = dict(self.quick)
        observed = training.pop("observed_events", None)
        new = dataclasses.replace(self, training=_section(TrainingSection, {**dataclasses.asdict(self.training), **training}, self.path, "quick"))
        if observed is not None:
            new = dataclasses.replace(new, observed=dataclasses.replace(self.observed, n_events=int(observed)))
        return new


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
            if isinstance(default, bool):
                value = bool(value)
            elif isinstance(default, int):
                if isinstance(value, float) and not value.is_integer():
                    raise TypeError
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
            elif isinstance(default, tuple):
                value = tuple(int(v) for v in value)
            elif isinstance(default, str):
                if not isinstance(value, str):
                    raise TypeError
        except (TypeError, ValueError):
            raise ConfigError(
                f"{path}: [{where}] {key} = {value!r} has the wrong type; expected {type(default).__name__} like {default!r}."
            ) from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0 and key not in ("seed", "alpha"):
            raise ConfigError(f"{path}: [{where}] {key} = {value!r} must be positive.")
        out[key] = value
    return cls(**out)


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
    allowed = {"analysis", "simulator", "truth", "observed", "training", "fit", "quick", "background", "nuisances"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; allowed sections are {sorted(allowed)}.")
    for required in ("analysis", "simulator", "truth"):
        if required not in raw:
            raise ConfigError(f"{path}: missing section [{required}].")
    simulator = dict(raw["simulator"])
    toy = simulator.pop("toy", None)
    if toy not in TOYS:
        raise ConfigError(f"{path}: [simulator] toy = {toy!r}; choose one of {list(TOYS)}.")
    truth = raw["truth"]
    if not truth or not all(isinstance(v, (int, float)) for v in truth.values()):
        raise ConfigError(f"{path}: [truth] must give a number for every parameter, e.g. M = 100.0.")
    training = _section(TrainingSection, raw.get("training", {}), path, "training")
    if training.method not in METHODS:
        raise ConfigError(f"{path}: [training] method = {training.method!r}; choose one of {list(METHODS)}.")
    fit = _section(FitSection, raw.get("fit", {}), path, "fit")
    if not 0.0 < fit.cl < 1.0:
        raise ConfigError(f"{path}: [fit] cl = {fit.cl} must lie in (0, 1), e.g. 0.683.")
    quick = dict(raw.get("quick", {}))
    _section(TrainingSection, {k: v for k, v in quick.items() if k != "observed_events"}, path, "quick")
    return AnalysisConfig(
        name=str(raw["analysis"].get("name", path.parent.name)),
        description=str(raw["analysis"].get("description", "")),
        path=path,
        toy=toy,
        toy_options=simulator,
        truth={k: float(v) for k, v in truth.items()},
        observed=_section(ObservedSection, raw.get("observed", {}), path, "observed"),
        training=training,
        fit=fit,
        quick=quick,
        background=dict(raw.get("background", {})),
        nuisances=dict(raw.get("nuisances", {})),
    )
