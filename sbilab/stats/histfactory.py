r"""HistFactory workspaces for pyhf: build them from histograms (any number of channels), load, patch, write.

:func:`build_workspace` turns histograms into a validated :class:`pyhf.Workspace`: one channel from
keywords (signal, backgrounds, observed counts and per-sample systematics), or any number of
:class:`Channel` s of :class:`Sample` s whose modifiers (``normfactor``, ``normsys``, ``histosys``,
``shapesys``, ``shapefactor``, ``staterror``, ``lumi``) are shared between samples and channels by
name — e.g. the four-region ABCD model or a signal region with control regions. Every mistake
is a :class:`~sbilab.exceptions.WorkspaceError` naming the channel and sample; pyhf's own
exceptions are wrapped with the workspace's channel and sample names.

pyhf's backend is global: everything here runs inside :func:`~sbilab.stats.pyhf_context.numpy_minuit`
(:mod:`sbilab.stats.pyhf_context`, re-exported here), which switches to the numpy backend with the
minuit optimizer and restores the previous one afterwards.
Inference on workspaces is in :mod:`sbilab.stats.binned`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyhf

from ..exceptions import WorkspaceError
from .pyhf_context import numpy_minuit, pyhf_backend, pyhf_errors

__all__ = ["pyhf_backend", "numpy_minuit", "Sample", "Channel", "build_workspace", "load_workspace", "apply_patch", "to_json", "pyhf_errors"]


def _counts(name: str, values: Any, n_bins: int | None) -> list[float]:
    try:
        array = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError) as err:
        raise WorkspaceError(f"{name} must be a list of bin contents, got {values!r} ({err}).") from None
    if n_bins is not None and array.size != n_bins:
        raise WorkspaceError(f"{name} has {array.size} bins but its channel's observed histogram has {n_bins}; "
                             "use the same binning for every histogram of a channel.")
    if not np.isfinite(array).all() or (array < 0).any():
        raise WorkspaceError(f"{name} has negative or non-finite bin contents {array.tolist()}; histograms must be counts >= 0.")
    return array.tolist()


@dataclass(frozen=True)
class Sample:
    r"""One sample of a :class:`Channel`: nominal counts and the modifiers acting on them.

    A modifier name used in several samples or channels is *one* parameter (correlated):
    e.g. the ABCD background ``normfactors=("mu_b", "tau_B")`` in region B and
    ``("mu_b", "tau_B", "tau_C")`` in region D share ``mu_b`` and ``tau_B``.

    Attributes:
        name: Sample name (unique within its channel; the same sample may appear in many channels).
        data: Nominal counts, ``(B,)`` with ``B`` the channel's bins.
        normfactors: Names of free multiplicative factors (``normfactor``; the POI is one of them).
        normsys: ``{name: (lo_factor, hi_factor)}`` constrained normalisations, e.g. ``(0.9, 1.1)``.
        histosys: ``{name: (lo_counts (B,), hi_counts (B,))}`` constrained shape variations.
        shapesys: ``{name: abs_uncertainty (B,)}`` uncorrelated per-bin (Poisson-constrained).
        shapefactors: Names of free per-bin factors (``shapefactor``, one parameter per bin).
        staterror: MC statistical uncertainty ``(B,)`` (Barlow–Beeston lite, shared by the samples
            of the channel as ``staterror_<channel>``), or ``None``.
        lumi: Whether the luminosity modifier ``lumi`` acts (give ``lumi_uncertainty`` to
            :func:`build_workspace`).
    """

    name: str
    data: Sequence[float]
    normfactors: Sequence[str] = ()
    normsys: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    histosys: Mapping[str, tuple[Sequence[float], Sequence[float]]] = field(default_factory=dict)
    shapesys: Mapping[str, Sequence[float]] = field(default_factory=dict)
    shapefactors: Sequence[str] = ()
    staterror: Sequence[float] | None = None
    lumi: bool = False


@dataclass(frozen=True)
class Channel:
    """A channel (region) of a workspace: its observed counts ``(B,)`` and its :class:`Sample` s."""

    name: str
    observed: Sequence[float]
    samples: Sequence[Sample]


_PER_BIN = ("shapesys", "shapefactor", "staterror")


def _modifiers(sample: Sample, channel: str, n_bins: int, where: str) -> list[dict[str, Any]]:
    """The pyhf modifier list of ``sample``, validated."""
    if isinstance(sample.normfactors, str) or isinstance(sample.shapefactors, str):
        raise WorkspaceError(f"{where}: normfactors and shapefactors are sequences of names, e.g. ('mu',), not a string.")
    mods: list[dict[str, Any]] = [{"name": str(n), "type": "normfactor", "data": None} for n in sample.normfactors]
    for syst, pair in sample.normsys.items():
        lo, hi = (float(v) for v in pair)
        if not (np.isfinite([lo, hi]).all() and lo > 0 and hi > 0):
            raise WorkspaceError(f"{where}: normsys {syst!r} has factors ({lo}, {hi}); they must be finite and > 0, e.g. (0.9, 1.1).")
        mods.append({"name": syst, "type": "normsys", "data": {"hi": hi, "lo": lo}})
    for syst, (lo, hi) in sample.histosys.items():
        data = {"hi_data": _counts(f"{where}: histosys {syst!r} hi", hi, n_bins), "lo_data": _counts(f"{where}: histosys {syst!r} lo", lo, n_bins)}
        mods.append({"name": syst, "type": "histosys", "data": data})
    for syst, unc in sample.shapesys.items():
        mods.append({"name": syst, "type": "shapesys", "data": _counts(f"{where}: shapesys {syst!r}", unc, n_bins)})
    mods += [{"name": str(n), "type": "shapefactor", "data": None} for n in sample.shapefactors]
    if sample.staterror is not None:
        mods.append({"name": f"staterror_{channel}", "type": "staterror", "data": _counts(f"{where}: staterror", sample.staterror, n_bins)})
    if sample.lumi:
        mods.append({"name": "lumi", "type": "lumi", "data": None})
    return mods


def _single_channel(channel: str, poi: str, signal: Any, backgrounds: Any, observed: Any, normsys: Any, histosys: Any,
                    shapesys: Any, staterror: Any) -> list[Channel]:
    """The one-channel keywords of :func:`build_workspace` as a list of one :class:`Channel`."""
    if observed is None or not signal:
        raise WorkspaceError("build_workspace: give channels=[Channel(...), ...], or signal={name: counts} and observed=counts "
                             "for one channel.")
    names = [*signal, *(backgrounds or {})]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise WorkspaceError(f"sample name(s) {dupes} used twice; sample names must be unique.")
    for group, mapping in (("normsys", normsys), ("histosys", histosys), ("shapesys", shapesys), ("staterror", staterror)):
        unknown = sorted(set(mapping or {}) - set(names))
        if unknown:
            raise WorkspaceError(f"{group} refers to unknown sample {unknown[0]!r}; samples are {sorted(names)}.")
    samples = [
        Sample(name, counts, normfactors=(poi,) if name in signal else (), normsys=(normsys or {}).get(name, {}),
               histosys=(histosys or {}).get(name, {}), shapesys=(shapesys or {}).get(name, {}),
               staterror=(staterror or {}).get(name))
        for name, counts in [*signal.items(), *(backgrounds or {}).items()]
    ]
    return [Channel(channel, observed, samples)]


def build_workspace(
    channels: Sequence[Channel] | None = None,
    *,
    signal: Mapping[str, Sequence[float]] | None = None,
    backgrounds: Mapping[str, Sequence[float]] | None = None,
    observed: Sequence[float] | None = None,
    normsys: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
    histosys: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]] | None = None,
    shapesys: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    staterror: Mapping[str, Sequence[float]] | None = None,
    channel: str = "SR",
    poi: str = "mu",
    measurement: str = "measurement",
    poi_bounds: tuple[float, float] = (0.0, 10.0),
    bounds: Mapping[str, tuple[float, float]] | None = None,
    inits: Mapping[str, float | Sequence[float]] | None = None,
    fixed: Mapping[str, float] | None = None,
    lumi_uncertainty: float | None = None,
) -> pyhf.Workspace:
    r"""A HistFactory workspace of any number of channels, validated by pyhf's schema and model.

    Either ``channels`` (a list of :class:`Channel`, each with its :class:`Sample` s and
    modifiers; the POI is a normfactor named ``poi`` on the signal samples), or one channel
    from the keywords ``signal``/``backgrounds``/``observed`` and the per-sample systematics.

    Example (ABCD, background A = μ_b, B = μ_b τ_B, C = μ_b τ_C, D = μ_b τ_B τ_C)::

        bkg = {"A": (), "B": ("tau_B",), "C": ("tau_C",), "D": ("tau_B", "tau_C")}
        ws = build_workspace([Channel(r, [n], [Sample("background", [1.0], normfactors=("mu_b", *bkg[r])),
                                               Sample("signal", [s], normfactors=("mu",))])
                              for r, n, s in zip("ABCD", (10, 100, 100, 1000), (1, 0, 0, 0))],
                             bounds={"mu_b": (0, 30), "tau_B": (0, 50), "tau_C": (0, 50)})

    Args:
        channels: The channels (names unique; pyhf orders channels and samples by name).
        signal: One-channel form: ``{sample: counts (B,)}``, each scaled by the normfactor ``poi``.
        backgrounds: One-channel form: ``{sample: counts (B,)}``.
        observed: One-channel form: observed counts, ``(B,)``.
        normsys, histosys, shapesys: One-channel form: ``{sample: {name: ...}}`` as in :class:`Sample`.
        staterror: One-channel form: ``{sample: abs_uncertainty (B,)}``.
        channel: One-channel form: the channel's name.
        poi, measurement: Names in the workspace.
        poi_bounds: Bounds of the parameter of interest.
        bounds: ``{parameter: (lo, hi)}`` of other parameters (per-bin ones get the pair in every bin).
        inits: ``{parameter: value or per-bin values}`` starting values.
        fixed: ``{parameter: value}`` held constant at ``value``.
        lumi_uncertainty: Relative luminosity uncertainty of the ``lumi`` modifier (e.g. 0.017).

    Raises:
        WorkspaceError: inconsistent binning, negative counts, duplicate channel or sample names,
            a name used for two modifier types, a per-bin modifier shared by channels of different
            bin counts, a POI that is no normfactor, settings for unknown parameters, both forms
            at once, or a specification pyhf rejects (its reason, with the channel and sample names).
    """
    one_channel = (signal, backgrounds, observed, normsys, histosys, shapesys, staterror)
    if channels is None:
        channels = _single_channel(channel, poi, signal, backgrounds, observed, normsys, histosys, shapesys, staterror)
    elif any(v is not None for v in one_channel):
        raise WorkspaceError("build_workspace: give either channels=[...] or the one-channel keywords "
                             "(signal, backgrounds, observed, normsys, histosys, shapesys, staterror), not both.")
    channels = list(channels)
    if not channels or not all(isinstance(c, Channel) for c in channels):
        raise WorkspaceError("build_workspace: channels must be a non-empty list of Channel(name, observed, samples).")
    spec_channels, observations = [], []
    kinds: dict[str, str] = {}  # modifier name -> type
    widths: dict[str, int] = {}  # per-bin modifier name -> bins
    for ch in channels:
        if not isinstance(ch.name, str) or not ch.name or any(ch.name == o["name"] for o in observations):
            raise WorkspaceError(f"channel name {ch.name!r} is empty or used twice; channel names must be unique strings.")
        obs = _counts(f"channel {ch.name!r}: observed", ch.observed, None)
        if not obs:
            raise WorkspaceError(f"channel {ch.name!r}: observed is empty; give one count per bin.")
        names = [s.name for s in ch.samples]
        if not names or not all(isinstance(s, Sample) for s in ch.samples):
            raise WorkspaceError(f"channel {ch.name!r} needs a non-empty list of Sample(name, data, ...).")
        if len(set(names)) != len(names):
            raise WorkspaceError(f"channel {ch.name!r}: sample names {names} repeat; sample names must be unique within a channel.")
        samples = []
        for s in ch.samples:
            where = f"channel {ch.name!r}, sample {s.name!r}"
            mods = _modifiers(s, ch.name, len(obs), where)
            for m in mods:
                if kinds.setdefault(m["name"], m["type"]) != m["type"]:
                    raise WorkspaceError(f"{where}: modifier {m['name']!r} is a {m['type']} here but a {kinds[m['name']]} "
                                         "elsewhere; one name is one parameter: rename one of them.")
                if m["type"] in _PER_BIN and widths.setdefault(m["name"], len(obs)) != len(obs):
                    raise WorkspaceError(f"{where}: per-bin modifier {m['name']!r} is shared by channels with "
                                         f"{widths[m['name']]} and {len(obs)} bins; give each channel its own name.")
            samples.append({"name": s.name, "data": _counts(f"{where}: data", s.data, len(obs)), "modifiers": mods})
        spec_channels.append({"name": ch.name, "samples": samples})
        observations.append({"name": ch.name, "data": obs})
    parameters = _parameters(kinds, widths, poi, poi_bounds, bounds or {}, inits or {}, fixed or {}, lumi_uncertainty)
    spec = {
        "channels": spec_channels,
        "observations": observations,
        "measurements": [{"name": measurement, "config": {"poi": poi, "parameters": parameters}}],
        "version": "1.0.0",
    }
    return _with_model(load_workspace(spec))


def _parameters(kinds: dict[str, str], widths: dict[str, int], poi: str, poi_bounds: tuple[float, float],
                bounds: Mapping[str, Any], inits: Mapping[str, Any], fixed: Mapping[str, float],
                lumi_uncertainty: float | None) -> list[dict[str, Any]]:
    """The measurement's parameter settings, validated against the modifiers in ``kinds``."""
    if kinds.get(poi) != "normfactor":
        raise WorkspaceError(f"the POI {poi!r} is not a normfactor of any sample; add normfactors=({poi!r},) to the signal "
                             f"samples or choose poi among {sorted(n for n, k in kinds.items() if k == 'normfactor')}.")
    if poi in bounds:
        raise WorkspaceError(f"bounds names the POI {poi!r}; give its bounds with poi_bounds=(lo, hi).")
    if not float(poi_bounds[0]) < float(poi_bounds[1]):
        raise WorkspaceError(f"poi_bounds = {tuple(poi_bounds)}; need lo < hi, e.g. (0.0, 10.0).")
    for argument, mapping in (("bounds", bounds), ("inits", inits), ("fixed", fixed)):
        unknown = sorted(set(mapping) - set(kinds))
        if unknown:
            raise WorkspaceError(f"{argument} names unknown parameter(s) {unknown}; the workspace's parameters are {sorted(kinds)}.")
    uses_lumi = kinds.get("lumi") == "lumi"
    if uses_lumi != (lumi_uncertainty is not None) or (uses_lumi and not 0 < float(lumi_uncertainty) < 1):
        raise WorkspaceError(f"lumi_uncertainty = {lumi_uncertainty!r} but {'some' if uses_lumi else 'no'} sample has lumi=True; "
                             "give a relative uncertainty in (0, 1) exactly when a sample uses the lumi modifier.")
    settings: dict[str, dict[str, Any]] = {poi: {"name": poi, "bounds": [[float(poi_bounds[0]), float(poi_bounds[1])]]}}
    if uses_lumi:
        sigma = float(lumi_uncertainty)
        settings["lumi"] = {"name": "lumi", "auxdata": [1.0], "sigmas": [sigma], "inits": [1.0],
                            "bounds": [[max(0.0, 1.0 - 5.0 * sigma), 1.0 + 5.0 * sigma]]}
    for name in sorted({*bounds, *inits, *fixed}):
        n = widths.get(name, 1)
        entry = settings.setdefault(name, {"name": name})
        if name in bounds:
            lo, hi = (float(v) for v in bounds[name])
            if not lo < hi:
                raise WorkspaceError(f"bounds[{name!r}] = ({lo}, {hi}); need lo < hi.")
            entry["bounds"] = [[lo, hi]] * n
        value = fixed.get(name, inits.get(name))
        if value is not None:
            values = np.broadcast_to(np.asarray(value, dtype=float), (n,)) if np.ndim(value) == 0 else np.asarray(value, dtype=float)
            if values.shape != (n,) or not np.isfinite(values).all():
                raise WorkspaceError(f"inits/fixed for {name!r} must be a finite number or {n} per-bin values, got {value!r}.")
            entry["inits"] = values.tolist()
        if name in fixed:
            entry["fixed"] = True
    return list(settings.values())


def load_workspace(spec: Mapping[str, Any] | str | Path) -> pyhf.Workspace:
    """A validated pyhf workspace from a JSON dict or a JSON file path.

    Validated means: it passes pyhf's schema, pyhf builds its model (sample and modifier bin
    counts; the POI is checked where a model is built for fits, since a background-only
    workspace has none until patched), and every observation has as many bins as its channel.

    Raises:
        WorkspaceError: the file is unreadable, the specification fails pyhf's schema, or the
            model or observations are inconsistent (pyhf's reason with the channel and sample names).
    """
    if isinstance(spec, (str, Path)):
        try:
            spec = json.loads(Path(spec).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise WorkspaceError(f"cannot read workspace JSON {str(spec)!r}: {err}") from err
    try:
        workspace = pyhf.Workspace(copy.deepcopy(dict(spec)))
    except pyhf.exceptions.InvalidSpecification as err:
        raise WorkspaceError(f"workspace fails pyhf's schema validation: {err}. Fix the specification.") from err
    except (pyhf.exceptions.InvalidWorkspaceOperation, KeyError, TypeError) as err:
        raise WorkspaceError(f"workspace specification is inconsistent: {err}") from err
    return _with_model(workspace, poi=False)


def apply_patch(workspace: pyhf.Workspace, patch: Any) -> pyhf.Workspace:
    """Apply a signal patch: a JSON-Patch list, a per-point patch file (path), or ``(PatchSet, name)``.

    The patched workspace is checked by building its model, so a patch with the wrong number
    of bins is refused here rather than at the first fit.

    Raises:
        WorkspaceError: the patch is unreadable, does not apply to this workspace, or the patched
            workspace fails validation (pyhf's reason, with the channel and sample names).
    """
    if isinstance(patch, (str, Path)):
        try:
            patch = json.loads(Path(patch).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise WorkspaceError(f"cannot read patch JSON {str(patch)!r}: {err}") from err
    if isinstance(patch, tuple) and len(patch) == 2 and isinstance(patch[0], pyhf.patchset.PatchSet):
        patchset, name = patch
        try:
            return _with_model(load_workspace(patchset[name].apply(dict(workspace))))
        except (pyhf.exceptions.InvalidPatchLookup, pyhf.exceptions.PatchSetVerificationError) as err:
            raise WorkspaceError(f"patch {name!r} cannot be applied: {err}") from err
    if not isinstance(patch, list):
        raise WorkspaceError(f"patch must be a JSON-Patch list of operations, a path, or (PatchSet, name); got {type(patch).__name__}.")
    import jsonpatch

    try:
        patched = jsonpatch.JsonPatch(patch).apply(copy.deepcopy(dict(workspace)))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
        raise WorkspaceError(f"patch does not apply to this workspace: {err}") from err
    return _with_model(load_workspace(patched))


def _with_model(workspace: pyhf.Workspace, *, poi: bool = True) -> pyhf.Workspace:
    """``workspace`` after checking that pyhf can build its model (bin counts, modifiers, the POI if ``poi``) and that its
    observations fit it."""
    with numpy_minuit(), pyhf_errors(workspace):
        model = workspace.model() if poi else workspace.model(poi_name=None)
    check_observations(workspace, model)
    return workspace


def check_observations(workspace: Any, model: Any) -> None:
    """WorkspaceError unless every channel of ``model`` has an observation with one count per bin."""
    observed = {o.get("name"): o.get("data") for o in workspace.get("observations", []) if isinstance(o, Mapping)}
    for channel, n_bins in model.config.channel_nbins.items():
        data = observed.get(channel)
        if data is None or len(data) != n_bins:
            raise WorkspaceError(
                f"the observation of channel {channel!r} has {None if data is None else len(data)} bins but the channel has "
                f"{n_bins} (samples {[s['name'] for c in workspace['channels'] if c['name'] == channel for s in c['samples']]}); "
                "give one observed count per bin."
            )


def to_json(workspace: pyhf.Workspace, path: str | Path | None = None) -> str:
    """The workspace as JSON text (sorted keys); also written to ``path`` if given."""
    text = json.dumps(dict(workspace), indent=2, sort_keys=True)
    if path is not None:
        Path(path).write_text(text)
    return text
