r"""Binned statistics with pyhf: HistFactory workspaces from histograms, hypotests, limits, patches.

Typical use: histogram a learned observable (the SALLY/SALLINO score projection, a classifier
output) for signal and backgrounds, build a HistFactory workspace with systematics
(``normsys``, ``histosys``, ``shapesys``, ``staterror``), then test and set limits — or load a
published workspace, apply a signal patch and test it (reinterpretation).

All computations use pyhf's numpy backend with the minuit optimizer, switched on only inside
each call and restored afterwards (:func:`numpy_minuit`), since ``pyhf.set_backend`` is global.
The hypothesis tests run through :mod:`sbilab.stats.asymptotic` on a :class:`PyhfModel`.
"""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyhf

from ..exceptions import WorkspaceError
from . import asymptotic
from .results import HypotestResult, UpperLimitResult

__all__ = [
    "numpy_minuit",
    "build_workspace",
    "load_workspace",
    "apply_patch",
    "to_json",
    "PyhfModel",
    "hypotest",
    "upper_limit",
]


@contextlib.contextmanager
def numpy_minuit(*, tolerance: float = 0.1, strategy: int | None = None) -> Iterator[None]:
    """Context in which pyhf uses the numpy backend (float64) and the minuit optimizer; restores the previous backend."""
    old_tensorlib, old_optimizer = pyhf.get_backend()
    pyhf.set_backend("numpy", pyhf.optimize.minuit_optimizer(tolerance=tolerance, strategy=strategy))
    try:
        yield
    finally:
        pyhf.set_backend(old_tensorlib, old_optimizer)


def _counts(name: str, values: Any, n_bins: int | None) -> list[float]:
    array = np.asarray(values, dtype=float).reshape(-1)
    if n_bins is not None and array.size != n_bins:
        raise WorkspaceError(f"{name} has {array.size} bins but the observed histogram has {n_bins}; use the same binning everywhere.")
    if not np.isfinite(array).all() or (array < 0).any():
        raise WorkspaceError(f"{name} has negative or non-finite bin contents {array.tolist()}; histograms must be counts >= 0.")
    return array.tolist()


def build_workspace(
    *,
    signal: Mapping[str, Sequence[float]],
    backgrounds: Mapping[str, Sequence[float]],
    observed: Sequence[float],
    normsys: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
    histosys: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]] | None = None,
    shapesys: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    staterror: Mapping[str, Sequence[float]] | None = None,
    channel: str = "SR",
    poi: str = "mu",
    measurement: str = "measurement",
    poi_bounds: tuple[float, float] = (0.0, 10.0),
) -> pyhf.Workspace:
    r"""A one-channel HistFactory workspace from histograms, validated against pyhf's schema.

    Args:
        signal: ``{sample: counts (B,)}``; each signal sample is scaled by the normfactor ``poi``.
        backgrounds: ``{sample: counts (B,)}``.
        observed: Observed counts, ``(B,)``.
        normsys: ``{sample: {name: (lo_factor, hi_factor)}}`` normalisation systematics
            (e.g. ``(0.9, 1.1)`` for ±10%); the same name on several samples is one correlated parameter.
        histosys: ``{sample: {name: (lo_counts (B,), hi_counts (B,))}}`` shape systematics.
        shapesys: ``{sample: {name: abs_uncertainty (B,)}}`` uncorrelated per-bin (Poisson-constrained).
        staterror: ``{sample: abs_uncertainty (B,)}`` MC statistical uncertainty (Barlow–Beeston lite,
            one shared parameter per bin, named ``staterror_<channel>``).
        channel, poi, measurement: Names in the workspace.
        poi_bounds: Bounds of the parameter of interest.

    Raises:
        WorkspaceError: inconsistent binning, negative counts, systematics for unknown samples,
            or a specification that fails pyhf's schema (the message carries pyhf's reason).
    """
    obs = _counts("observed", observed, None)
    n_bins = len(obs)
    if not obs:
        raise WorkspaceError("observed is empty; give one count per bin.")
    if not signal:
        raise WorkspaceError("signal is empty; give at least one signal histogram {name: counts}.")
    samples: dict[str, dict[str, Any]] = {}
    for kind, group in (("signal", signal), ("background", backgrounds)):
        for name, counts in group.items():
            if name in samples:
                raise WorkspaceError(f"sample name {name!r} is used twice; sample names must be unique.")
            modifiers: list[dict[str, Any]] = []
            if kind == "signal":
                modifiers.append({"name": poi, "type": "normfactor", "data": None})
            samples[name] = {"name": name, "data": _counts(f"{kind} {name!r}", counts, n_bins), "modifiers": modifiers}

    def sample(group: str, name: str) -> dict[str, Any]:
        if name not in samples:
            raise WorkspaceError(f"{group} refers to unknown sample {name!r}; samples are {sorted(samples)}.")
        return samples[name]

    for name, systs in (normsys or {}).items():
        for syst, (lo, hi) in systs.items():
            sample("normsys", name)["modifiers"].append({"name": syst, "type": "normsys", "data": {"lo": float(lo), "hi": float(hi)}})
    for name, systs in (histosys or {}).items():
        for syst, (lo, hi) in systs.items():
            data = {"lo_data": _counts(f"histosys {syst} lo", lo, n_bins), "hi_data": _counts(f"histosys {syst} hi", hi, n_bins)}
            sample("histosys", name)["modifiers"].append({"name": syst, "type": "histosys", "data": data})
    for name, systs in (shapesys or {}).items():
        for syst, unc in systs.items():
            sample("shapesys", name)["modifiers"].append({"name": syst, "type": "shapesys", "data": _counts(f"shapesys {syst}", unc, n_bins)})
    for name, unc in (staterror or {}).items():
        sample("staterror", name)["modifiers"].append(
            {"name": f"staterror_{channel}", "type": "staterror", "data": _counts(f"staterror {name}", unc, n_bins)}
        )
    spec = {
        "channels": [{"name": channel, "samples": list(samples.values())}],
        "observations": [{"name": channel, "data": obs}],
        "measurements": [
            {"name": measurement, "config": {"poi": poi, "parameters": [{"name": poi, "bounds": [list(map(float, poi_bounds))]}]}}
        ],
        "version": "1.0.0",
    }
    return load_workspace(spec)


def load_workspace(spec: Mapping[str, Any] | str | Path) -> pyhf.Workspace:
    """A validated pyhf workspace from a JSON dict or a JSON file path.

    Raises:
        WorkspaceError: the file is unreadable or the specification fails pyhf's schema.
    """
    if isinstance(spec, (str, Path)):
        try:
            spec = json.loads(Path(spec).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise WorkspaceError(f"cannot read workspace JSON {str(spec)!r}: {err}") from err
    try:
        return pyhf.Workspace(copy.deepcopy(dict(spec)))
    except pyhf.exceptions.InvalidSpecification as err:
        raise WorkspaceError(f"workspace fails pyhf's schema validation: {err}. Fix the specification.") from err
    except (pyhf.exceptions.InvalidWorkspaceOperation, KeyError, TypeError) as err:
        raise WorkspaceError(f"workspace specification is inconsistent: {err}") from err


def apply_patch(workspace: pyhf.Workspace, patch: Any) -> pyhf.Workspace:
    """Apply a signal patch: a JSON-Patch list, a per-point patch file (path), or ``(PatchSet, name)``.

    Raises:
        WorkspaceError: the patch is unreadable, does not apply to this workspace, or the patched
            workspace fails validation.
    """
    if isinstance(patch, (str, Path)):
        try:
            patch = json.loads(Path(patch).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise WorkspaceError(f"cannot read patch JSON {str(patch)!r}: {err}") from err
    if isinstance(patch, tuple) and len(patch) == 2 and isinstance(patch[0], pyhf.patchset.PatchSet):
        patchset, name = patch
        try:
            return load_workspace(patchset[name].apply(dict(workspace)))
        except (pyhf.exceptions.InvalidPatchLookup, pyhf.exceptions.PatchSetVerificationError) as err:
            raise WorkspaceError(f"patch {name!r} cannot be applied: {err}") from err
    if not isinstance(patch, list):
        raise WorkspaceError(f"patch must be a JSON-Patch list of operations, a path, or (PatchSet, name); got {type(patch).__name__}.")
    import jsonpatch

    try:
        patched = jsonpatch.JsonPatch(patch).apply(copy.deepcopy(dict(workspace)))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
        raise WorkspaceError(f"patch does not apply to this workspace: {err}") from err
    return load_workspace(patched)


def to_json(workspace: pyhf.Workspace, path: str | Path | None = None) -> str:
    """The workspace as JSON text (sorted keys); also written to ``path`` if given."""
    text = json.dumps(dict(workspace), indent=2, sort_keys=True)
    if path is not None:
        Path(path).write_text(text)
    return text


class PyhfModel:
    r"""A pyhf model as an :class:`~sbilab.stats.asymptotic.ProfileModel` (numpy backend, minuit).

    Args:
        workspace: The workspace.
        measurement: Measurement name (default: the first).
        tolerance: Minuit tolerance.

    Fits are remembered per (data, fixed POI): a CLs scan over μ refits the same free fit, μ = 0
    fit and Asimov data at every tested point, so an upper-limit scan costs one fit per μ.
    """

    def __init__(self, workspace: pyhf.Workspace, *, measurement: str | None = None, tolerance: float = 0.1) -> None:
        self.workspace = workspace
        self.tolerance = tolerance
        self._fits: dict[tuple[bytes, float | None], tuple[float, np.ndarray, bool]] = {}
        with numpy_minuit():
            try:
                self.model = workspace.model(measurement_name=measurement)
            except pyhf.exceptions.InvalidMeasurement as err:
                raise WorkspaceError(f"measurement {measurement!r} not found: {err}") from err
            self.observed = np.asarray(workspace.data(self.model), dtype=float)
        self.poi_index = int(self.model.config.poi_index)

    def fit(self, data: Any, poi: float | None = None) -> tuple[float, np.ndarray, bool]:
        """``(-2 log L_min, parameters, converged)`` with the POI free (``None``) or fixed (remembered)."""
        key = (np.asarray(data, dtype=float).tobytes(), None if poi is None else float(poi))
        if key not in self._fits:
            self._fits[key] = self._fit(data, poi)
        twice_nll, pars, ok = self._fits[key]
        return twice_nll, pars.copy(), ok

    def _fit(self, data: Any, poi: float | None) -> tuple[float, np.ndarray, bool]:
        with numpy_minuit(tolerance=self.tolerance):
            fixed = list(self.model.config.suggested_fixed())
            fixed[self.poi_index] = True
            if poi is not None and all(fixed):  # nothing left to fit: evaluate
                pars = np.asarray(self.model.config.suggested_init(), dtype=float)
                pars[self.poi_index] = poi
                return float(-2.0 * self.model.logpdf(pars, data)[0]), pars, True
            try:
                if poi is None:
                    pars, twice_nll = pyhf.infer.mle.fit(data, self.model, return_fitted_val=True)
                else:
                    pars, twice_nll = pyhf.infer.mle.fixed_poi_fit(poi, data, self.model, return_fitted_val=True)
            except pyhf.exceptions.FailedMinimization as err:
                result = getattr(err, "result", None)
                pars = np.asarray(getattr(result, "x", np.full(self.model.config.npars, np.nan)))
                return float(getattr(result, "fun", np.nan)), pars, False
        return float(twice_nll), np.asarray(pars, dtype=float), True

    def asimov(self, parameters: np.ndarray) -> np.ndarray:
        """Expected main + auxiliary data at ``parameters``."""
        with numpy_minuit():
            return np.asarray(self.model.expected_data(parameters), dtype=float)


def _model(workspace: pyhf.Workspace | PyhfModel) -> PyhfModel:
    return workspace if isinstance(workspace, PyhfModel) else PyhfModel(workspace)


def hypotest(
    workspace: pyhf.Workspace | PyhfModel, poi: float, *, data: Sequence[float] | None = None, test_statistic: str = "qtilde"
) -> HypotestResult:
    r"""Asymptotic CLs test of :math:`\mu` = ``poi`` on the workspace's observed data (or ``data``).

    Raises:
        WorkspaceError: ``data`` has the wrong length (it needs main plus auxiliary data).
    """
    model = _model(workspace)
    values = model.observed if data is None else np.asarray(data, dtype=float)
    if values.shape != model.observed.shape:
        raise WorkspaceError(
            f"data has {values.size} entries; this model needs {model.observed.size} (main bins plus auxiliary data)."
        )
    return asymptotic.hypotest(model, values, poi, test_statistic=test_statistic)


def upper_limit(
    workspace: pyhf.Workspace | PyhfModel,
    *,
    alpha: float = 0.05,
    scan: Sequence[float] | None = None,
    bracket: tuple[float, float] = (0.0, 10.0),
) -> UpperLimitResult:
    r"""Observed and expected CLs upper limits on the POI (:math:`\tilde q_\mu`)."""
    model = _model(workspace)
    return asymptotic.upper_limit(model, model.observed, alpha=alpha, scan=scan, bracket=bracket)
