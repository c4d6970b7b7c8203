r"""Binned inference with pyhf: a workspace as a profile model, CLs hypotests and upper limits.

Typical use: histogram a learned observable (the SALLY/SALLINO score projection, a classifier
output) for signal and backgrounds, build a HistFactory workspace with systematics
(:func:`~sbilab.stats.histfactory.build_workspace`, re-exported here), then test and set limits
with :func:`workspace_hypotest` and :func:`workspace_upper_limit` — or load a published
workspace, apply a signal patch and test it (reinterpretation).

The workspace-level functions take a :class:`pyhf.Workspace` (or a :class:`PyhfModel`); the
model-level :func:`sbilab.stats.hypotest` and :func:`sbilab.stats.upper_limit` take any
:class:`~sbilab.stats.asymptotic.ProfileModel` and a dataset, and run underneath.
All computations use pyhf's numpy backend with the minuit optimizer, switched on only inside
each call and restored afterwards (:func:`numpy_minuit`), since ``pyhf.set_backend`` is global.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyhf

from ..exceptions import WorkspaceError
from . import asymptotic
from .histfactory import Channel, Sample, apply_patch, build_workspace, check_observations, load_workspace, numpy_minuit, pyhf_errors, to_json
from .results import HypotestResult, UpperLimitResult

__all__ = [
    "numpy_minuit",
    "Sample",
    "Channel",
    "build_workspace",
    "load_workspace",
    "apply_patch",
    "to_json",
    "PyhfModel",
    "workspace_hypotest",
    "workspace_upper_limit",
]


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
        with numpy_minuit(), pyhf_errors(workspace):
            try:
                self.model = workspace.model(measurement_name=measurement)
            except pyhf.exceptions.InvalidMeasurement as err:
                raise WorkspaceError(f"measurement {measurement!r} not found: {err}") from err
            check_observations(workspace, self.model)
            self.observed = np.asarray(workspace.data(self.model), dtype=float)
        self.poi_index = int(self.model.config.poi_index)

    def _data(self, data: Any) -> np.ndarray:
        """``data`` as float64 ``(B + A,)``, or WorkspaceError naming the channels when its length is wrong."""
        values = np.asarray(data, dtype=float)
        if values.shape != self.observed.shape:
            raise WorkspaceError(
                f"data has shape {values.shape}; this model needs ({self.observed.size},): the main bins of channels "
                f"{dict(self.model.config.channel_nbins)} followed by {self.model.config.nauxdata} auxiliary data."
            )
        return values

    def fit(self, data: Any, poi: float | None = None) -> tuple[float, np.ndarray, bool]:
        """``(-2 log L_min, parameters, converged)`` with the POI free (``None``) or fixed (remembered).

        Raises:
            WorkspaceError: ``data`` does not have the model's length (main bins plus auxiliary data).
        """
        data = self._data(data)
        key = (data.tobytes(), None if poi is None else float(poi))
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
        """Expected main + auxiliary data at ``parameters`` ``(npars,)``.

        Raises:
            WorkspaceError: ``parameters`` does not have one entry per model parameter.
        """
        pars = np.asarray(parameters, dtype=float)
        if pars.shape != (self.model.config.npars,):
            raise WorkspaceError(f"parameters has shape {pars.shape}; this model has {self.model.config.npars} parameters "
                                 f"{self.model.config.par_names}.")
        with numpy_minuit(), pyhf_errors(self.workspace):
            return np.asarray(self.model.expected_data(pars), dtype=float)


def _model(workspace: pyhf.Workspace | PyhfModel, function: str) -> PyhfModel:
    if isinstance(workspace, PyhfModel):
        return workspace
    if not isinstance(workspace, pyhf.Workspace):
        raise WorkspaceError(f"{function} takes a pyhf.Workspace or a PyhfModel, got {type(workspace).__name__}; for any other "
                             "profile model and dataset call sbilab.stats.hypotest / sbilab.stats.upper_limit.")
    return PyhfModel(workspace)


def workspace_hypotest(
    workspace: pyhf.Workspace | PyhfModel, poi: float, *, data: Sequence[float] | None = None, test_statistic: str = "qtilde"
) -> HypotestResult:
    r"""Asymptotic CLs test of :math:`\mu` = ``poi`` on a workspace's observed data (or ``data``).

    The workspace-level form of :func:`sbilab.stats.hypotest` (which takes a profile model and a
    dataset): the model is built from the workspace (or given as a :class:`PyhfModel`, whose
    fits are remembered across calls) and the data default to its observations.

    Args:
        workspace: A :class:`pyhf.Workspace` or a :class:`PyhfModel` of one.
        poi: Tested value of the parameter of interest.
        data: Main plus auxiliary data, ``(B + A,)`` (default: the workspace's observations).
        test_statistic: ``"qtilde"``, ``"qmu"`` or ``"q0"``.

    Raises:
        WorkspaceError: ``workspace`` is neither a workspace nor a PyhfModel, or ``data`` has the
            wrong length (it needs main plus auxiliary data).
    """
    model = _model(workspace, "workspace_hypotest")
    values = model.observed if data is None else np.asarray(data, dtype=float)
    if values.shape != model.observed.shape:
        raise WorkspaceError(
            f"data has {values.size} entries; this model needs {model.observed.size} (main bins plus auxiliary data)."
        )
    return asymptotic.hypotest(model, values, poi, test_statistic=test_statistic)


def workspace_upper_limit(
    workspace: pyhf.Workspace | PyhfModel,
    *,
    alpha: float = 0.05,
    scan: Sequence[float] | None = None,
    bracket: tuple[float, float] = (0.0, 10.0),
    test_statistic: str = "qtilde",
) -> UpperLimitResult:
    r"""Observed and expected CLs upper limits on the POI of a workspace, on its observed data.

    The workspace-level form of :func:`sbilab.stats.upper_limit`; see it for ``alpha``, ``scan``
    (linear interpolation of CLs between scan points, as pyhf and abcd-pyhf do) and ``bracket``.

    Raises:
        WorkspaceError: ``workspace`` is neither a workspace nor a PyhfModel.
        FitError: ``alpha`` not in (0, 1), or no crossing inside the bracket.
    """
    model = _model(workspace, "workspace_upper_limit")
    return asymptotic.upper_limit(model, model.observed, alpha=alpha, scan=scan, bracket=bracket, test_statistic=test_statistic)
