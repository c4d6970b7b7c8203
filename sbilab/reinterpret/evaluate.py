r"""One signal point of a scan: patch the background workspace, test μ, optionally find the CLs limits.

The test is the asymptotic CLs test of :func:`sbilab.stats.hypotest` (:math:`\tilde q_\mu`,
Cowan, Cranmer, Gross, Vitells, arXiv:1007.1727) on a :class:`~sbilab.stats.binned.PyhfModel`.
Per point it runs four fits where ``pyhf.infer.hypotest`` runs five: the free fit on the Asimov
data is exact (the parameters that made them). The fits start from the previous point's
background-only fit (``warm``), and each later fit from the nearest earlier one.

The background-only fit cannot be shared between the points of a region: a patch's signal
carries its own ``staterror`` whose yields enter the per-bin Barlow-Beeston widths of the whole
channel (also at μ = 0), and patches differ in the control regions they add signal to. It is
the best start for the next point's fits instead.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping

import numpy as np
import pyhf

from ..exceptions import ConfigError, FitError, WorkspaceError
from ..stats import asymptotic
from ..stats.binned import PyhfModel
from ..stats.pyhf_context import BACKENDS, OPTIMIZERS, pyhf_backend
from .patches import SignalPatch, patched_workspace
from .results import PatchResult

__all__ = ["ScanSettings", "evaluate_patch", "poi_modifier_check"]

_LIMIT_CEILING = 1.0e4  # the largest POI bound tried while searching for a limit


@dataclass(frozen=True)
class ScanSettings:
    r"""How each signal point is tested (saved with the results; a resumed scan must use the same).

    Attributes:
        poi: The tested signal strength μ.
        test_statistic: ``"qtilde"`` (:math:`\tilde q_\mu`, pyhf's default) or ``"qmu"``.
        optimizer: ``"scipy"`` (SLSQP, pyhf's default: agrees with ``pyhf.infer.hypotest`` to
            ~1e-5 in CLs on the ATLAS sbottom patches) or ``"minuit"`` (measured 15x slower on
            them; use it with the numpy backend: pyhf's minuit with torch gradients took 5x longer still).
        tolerance: The optimizer's tolerance (``None``: its default, SLSQP ``ftol`` 1e-6, minuit 0.1).
        backend: ``"torch"`` (float64, exact gradients by autodiff; 2-3x fewer CPU seconds per
            point with scipy than ``"numpy"``, whose gradients are finite differences).
        upper_limits: Also find the observed and expected 95% CL (``alpha``) upper limits on μ.
        alpha: Size of the test for the limits.
        warm_start: Start each point's fits from the previous point's background-only fit.
    """

    poi: float = 1.0
    test_statistic: Literal["qtilde", "qmu"] = "qtilde"
    optimizer: Literal["scipy", "minuit"] = "scipy"
    tolerance: float | None = None
    backend: Literal["torch", "numpy"] = "torch"
    upper_limits: bool = False
    alpha: float = 0.05
    warm_start: bool = True

    def __post_init__(self) -> None:
        if self.test_statistic not in ("qtilde", "qmu"):
            raise ConfigError(f"test_statistic={self.test_statistic!r}; a limit scan uses 'qtilde' (default) or 'qmu'.")
        if self.optimizer not in OPTIMIZERS or self.backend not in BACKENDS:
            raise ConfigError(f"optimizer={self.optimizer!r}, backend={self.backend!r}; choose from {OPTIMIZERS} and {BACKENDS}.")
        if self.tolerance is not None and not (math.isfinite(self.tolerance) and self.tolerance > 0):
            raise ConfigError(f"tolerance={self.tolerance!r}; give a positive number or None for the optimizer's default.")
        if not (math.isfinite(self.poi) and self.poi > 0) or not 0 < self.alpha < 1:
            raise ConfigError(f"poi={self.poi!r}, alpha={self.alpha!r}; need poi > 0 and 0 < alpha < 1.")

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScanSettings:
        """Settings from :meth:`to_dict`.

        Raises:
            ConfigError: an unknown key.
        """
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown scan settings {unknown}; known: {sorted(cls.__dataclass_fields__)}.")
        return cls(**dict(data))


def poi_modifier_check(spec: Mapping[str, Any], *, measurement: str | None = None, where: str = "the workspace") -> str:
    """The POI's name, after checking that it is a ``normfactor`` acting on at least one sample.

    Raises:
        WorkspaceError: no measurement, no sample carries the POI (a patch without signal), or
            the POI is another kind of modifier (a signal strength must be a free normfactor).
    """
    measurements = {m["name"]: m for m in spec.get("measurements", [])}
    if not measurements or (measurement is not None and measurement not in measurements):
        raise WorkspaceError(f"{where} has no measurement {measurement!r}; its measurements are {sorted(measurements)}.")
    poi = (measurements[measurement] if measurement else spec["measurements"][0])["config"]["poi"]
    kinds = {(m["type"], c["name"], s["name"]) for c in spec["channels"] for s in c["samples"] for m in s["modifiers"]
             if m["name"] == poi}
    if not kinds:
        raise WorkspaceError(f"the POI {poi!r} acts on no sample of {where}: it adds no signal (or names its normfactor "
                             f"differently); a signal sample needs the modifier {{'name': {poi!r}, 'type': 'normfactor'}}.")
    wrong = sorted(k for k in kinds if k[0] != "normfactor")
    if wrong:
        raise WorkspaceError(f"the POI {poi!r} of {where} is a {wrong[0][0]} modifier (channel {wrong[0][1]!r}, sample "
                             f"{wrong[0][2]!r}), not a normfactor; a signal strength must be a free normfactor: change its type "
                             "or choose another POI in the measurement.")
    return poi


def _model(background: Mapping[str, Any], patch: SignalPatch, settings: ScanSettings, warm: Mapping[str, Any] | None,
           poi_bounds: tuple[float, float] | None = None) -> PyhfModel:
    workspace = patched_workspace(background, patch)
    poi_modifier_check(workspace, where=f"patch {patch.name!r}")
    try:
        return PyhfModel(workspace, optimizer=settings.optimizer, tolerance=settings.tolerance, backend=settings.backend,
                         warm_start=warm, poi_bounds=poi_bounds, validate=False)
    except WorkspaceError as err:
        raise WorkspaceError(f"patch {patch.name!r} does not match the workspace: {err}") from err


def _limits(model: PyhfModel, build: Any, settings: ScanSettings) -> tuple[float, tuple[float, ...]]:
    """Observed and expected CLs limits; the POI bound is widened when the best fit or a limit lies beyond it."""
    poi, lo = model.poi_index, float(model.bounds[model.poi_index, 0])
    while model.fit(model.observed)[1][poi] >= model.bounds[poi, 1] * (1 - 1e-6):
        if model.bounds[poi, 1] >= _LIMIT_CEILING:
            return math.nan, (math.nan,) * 5
        model = build((lo, 10.0 * model.bounds[poi, 1]))
    hi = float(model.bounds[poi, 1])
    while True:
        test = asymptotic.hypotest(model, model.observed, hi, test_statistic=settings.test_statistic)
        if max(test.cls_obs, test.cls_expected[-1]) < settings.alpha:
            break
        if hi >= _LIMIT_CEILING:
            return math.nan, (math.nan,) * 5
        hi *= 4.0
    try:
        limit = asymptotic.upper_limit(model, model.observed, alpha=settings.alpha, bracket=(0.0, hi),
                                       test_statistic=settings.test_statistic)
    except FitError:
        return math.nan, (math.nan,) * 5
    return limit.observed, tuple(limit.expected)


def evaluate_patch(background: Mapping[str, Any], patch: SignalPatch, settings: ScanSettings,
                   warm: Mapping[str, Any] | None = None) -> tuple[PatchResult, dict[str, list[float]] | None]:
    """Test one signal point: observed and expected CLs at ``settings.poi`` (and the limits if asked).

    Args:
        background: The background-only workspace specification (validated).
        patch: The signal patch.
        settings: How to test.
        warm: ``{parameter: values}`` to start from (the previous point's background-only fit).

    Returns:
        The result, and this point's background-only fit by parameter name (the next ``warm``;
        ``None`` when the point failed). A patch that does not apply or does not match gives a
        result with ``error`` set instead of raising.
    """
    cpu, wall = time.process_time(), time.perf_counter()
    threads = _threads()
    try:
        with pyhf_backend(settings.backend, settings.optimizer, tolerance=settings.tolerance):
            model = _model(background, patch, settings, warm)
            test = asymptotic.hypotest(model, model.observed, settings.poi, test_statistic=settings.test_statistic)
            mu_hat = float(model.fit(model.observed)[1][model.poi_index])
            limits: tuple[float, tuple[float, ...]] = (math.nan, ())
            if settings.upper_limits:
                limits = _limits(model, lambda bounds: _model(background, patch, settings, warm, bounds), settings)
            _, background_fit, ok = model.fit(model.observed, 0.0)
            next_warm = model.parameters(background_fit) if ok and np.isfinite(background_fit).all() else None
    except (WorkspaceError, pyhf.exceptions.InvalidModel) as err:
        return PatchResult.failed(patch.name, patch.values, settings.poi, str(err), time.process_time() - cpu,
                                  time.perf_counter() - wall, threads), None
    result = PatchResult(patch.name, patch.values, settings.poi, test.cls_obs, tuple(test.cls_expected), mu_hat, test.valid,
                         upper_limit=limits[0], upper_limits_expected=limits[1], cpu_s=time.process_time() - cpu,
                         wall_s=time.perf_counter() - wall, threads=threads)
    return result, next_warm


def _threads() -> int:
    """Threads torch runs with in this process."""
    import torch

    return int(torch.get_num_threads())
