r"""A new signal in a published background-only likelihood, by channel *name*.

:func:`signal_patch` writes the JSON Patch (RFC 6902) that a published search's own signal
patches are made of: one signal sample per channel named in ``yields`` (channel indices found
from the names), carrying the POI's ``normfactor``, the luminosity modifier when the workspace
has one, optional per-bin statistical uncertainties (joining the channel's ``staterror``
Barlow-Beeston parameters, as the published signal samples do) and an optional overall signal
systematic (``normsys``). The published patches' conventions are applied when asked: channels
matching ``drop`` (e.g. validation regions ``"VR*"``) are removed, and signal is added to the
control regions simply by giving their yields. The POI's bounds are widened so that a weak
signal's upper limit lies inside them (the published ``[0, 10]`` of a normfactor cannot hold the
limit of a signal ten times weaker than the one it was made for).
:func:`add_signal` applies it and returns the validated workspace.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pyhf

from ..exceptions import WorkspaceError
from .patches import SignalPatch

__all__ = ["signal_patch", "add_signal", "poi_upper_bound"]


def _channel_names(spec: Mapping[str, Any]) -> list[str]:
    return [c["name"] for c in spec.get("channels", [])]


def _bins(spec: Mapping[str, Any], index: int) -> int:
    channel = spec["channels"][index]
    return len(channel["samples"][0]["data"]) if channel["samples"] else 0


def _counts(what: str, channel: str, values: Any, n_bins: int) -> list[float]:
    array = np.asarray(values, dtype=float).reshape(-1)
    if array.size != n_bins:
        raise WorkspaceError(f"{what} of channel {channel!r} has {array.size} bins; the channel has {n_bins}: give one number per bin.")
    if not np.isfinite(array).all() or (array < 0).any():
        raise WorkspaceError(f"{what} of channel {channel!r} = {array.tolist()}; need finite numbers >= 0.")
    return array.tolist()


def poi_upper_bound(signal: Mapping[str, Sequence[float]], background: Mapping[str, Sequence[float]]) -> float:
    r"""An upper POI bound that holds the 95% CL limit with a wide margin.

    The most sensitive bin's limit is about :math:`\mu_{95} \approx (2\sqrt{b} + 3)/s` (Gaussian
    for large :math:`b`, 3 events for :math:`b = 0`); the bound is :math:`\max(10, 10\,\mu_{95})`
    rounded up to 1, 2 or 5 times a power of ten.

    Args:
        signal: ``{channel: yields (B,)}``.
        background: ``{channel: total background (B,)}`` of the same channels.
    """
    best = math.inf
    for name, s in signal.items():
        for s_bin, b_bin in zip(np.asarray(s, dtype=float), np.asarray(background[name], dtype=float)):
            if s_bin > 0:
                best = min(best, (2.0 * math.sqrt(max(b_bin, 0.0)) + 3.0) / s_bin)
    bound = max(10.0, 10.0 * best) if math.isfinite(best) else 10.0
    decade = 10.0 ** math.floor(math.log10(bound))
    return next(m * decade for m in (1.0, 2.0, 5.0, 10.0) if m * decade >= bound * (1 - 1e-12))


def _lumi_name(spec: Mapping[str, Any]) -> str | None:
    names = {m["name"] for c in spec["channels"] for s in c["samples"] for m in s["modifiers"] if m["type"] == "lumi"}
    return sorted(names)[0] if names else None


def _staterror_name(channel: Mapping[str, Any]) -> str:
    names = {m["name"] for s in channel["samples"] for m in s["modifiers"] if m["type"] == "staterror"}
    return sorted(names)[0] if names else f"staterror_{channel['name']}"


def signal_patch(
    background: Mapping[str, Any],
    yields: Mapping[str, Sequence[float]],
    *,
    name: str = "signal",
    uncertainties: Mapping[str, Sequence[float]] | None = None,
    systematic: tuple[float, float] | None = None,
    systematic_name: str = "signal_syst",
    modifiers: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    drop: Sequence[str] = (),
    poi_bounds: tuple[float, float] | None = None,
    measurement: str | None = None,
    values: Sequence[float] = (),
) -> SignalPatch:
    """The JSON Patch adding a signal to a background-only workspace, by channel name.

    Example (the ATLAS sbottom search's conventions: no validation region, signal also in the CR)::

        patch = signal_patch(bkg, {"SR_meff": [0.01, 0.17, 1.80], "CRtt_meff": [0.08, 0.67, 1.48]}, drop=["VR*"])

    Args:
        background: The background-only specification (e.g. ``dict(read_background(...))``).
        yields: ``{channel name: signal yields (B,)}`` at POI = 1, one number per bin.
        name: The signal sample's (and the patch's) name.
        uncertainties: ``{channel name: absolute per-bin uncertainty (B,)}`` of the signal's
            yields (Monte Carlo statistics), entered as the channel's ``staterror`` modifier.
        systematic: ``(hi, lo)`` relative normalisation at ±1σ of one signal systematic
            (``normsys``), e.g. ``(1.1, 0.9)``.
        systematic_name: Its nuisance parameter's name.
        modifiers: ``{channel name: [modifier, ...]}`` further pyhf modifiers of the signal
            sample, added as given (e.g. shape systematics, ``histosys``, of a published signal).
        drop: Shell-style patterns of channels to remove (e.g. ``["VR*"]``: validation regions,
            as the published patches do); their observations are removed too.
        poi_bounds: Bounds of the POI; default ``(0, poi_upper_bound(...))``.
        measurement: The measurement whose POI is used and whose bounds are set (default: all
            measurements' POIs must agree; the first one's name is used).
        values: The signal model's parameters (e.g. masses), kept with the patch.

    Raises:
        WorkspaceError: an unknown channel, a channel both given and dropped, yields or
            uncertainties with the wrong number of bins or negative, a sample ``name`` already in
            the channel, the POI already a modifier of another kind, or bad ``poi_bounds`` or
            ``systematic``.
    """
    channels = _channel_names(background)
    measurements = list(background.get("measurements", []))
    chosen = [i for i, m in enumerate(measurements) if measurement is None or m["name"] == measurement]
    if not chosen:
        raise WorkspaceError(f"no measurement {measurement!r}; the workspace's are {[m['name'] for m in measurements]}.")
    poi = measurements[chosen[0]]["config"]["poi"]
    unknown = sorted(set(yields) - set(channels)) + sorted((set(uncertainties or {}) | set(modifiers or {})) - set(yields))
    if unknown:
        raise WorkspaceError(f"channels {unknown} are not in the workspace (or have uncertainties or modifiers but no yields); its channels are "
                             f"{channels}.")
    dropped = [c for c in channels if any(fnmatch.fnmatchcase(c, pattern) for pattern in drop)]
    both = sorted(set(dropped) & set(yields))
    if both:
        raise WorkspaceError(f"channels {both} get signal yields but match drop={list(drop)}; drop them or give no yields.")
    if not yields:
        raise WorkspaceError(f"yields is empty; give {{channel name: yields}} for at least one of {channels}.")
    other = sorted({m["type"] for c in background["channels"] for s in c["samples"] for m in s["modifiers"]
                    if m["name"] == poi and m["type"] != "normfactor"})
    if other:
        raise WorkspaceError(f"the POI {poi!r} is already a {other[0]} modifier in the workspace; a signal strength must be a "
                             "normfactor: choose another POI in the measurement.")
    if systematic is not None and not (len(systematic) == 2 and all(math.isfinite(v) and v > 0 for v in systematic)):
        raise WorkspaceError(f"systematic={systematic!r}; give (hi, lo) relative normalisations > 0, e.g. (1.1, 0.9).")
    lumi = _lumi_name(background)
    operations: list[dict[str, Any]] = []
    signal: dict[str, list[float]] = {}
    totals: dict[str, list[float]] = {}
    for index, channel in enumerate(background["channels"]):
        if channel["name"] not in yields:
            continue
        n_bins = _bins(background, index)
        counts = _counts("yields", channel["name"], yields[channel["name"]], n_bins)
        if any(s["name"] == name for s in channel["samples"]):
            raise WorkspaceError(f"channel {channel['name']!r} already has a sample {name!r}; give the signal another name=.")
        sample_modifiers: list[dict[str, Any]] = [{"name": poi, "type": "normfactor", "data": None}]
        if lumi is not None:
            sample_modifiers.append({"name": lumi, "type": "lumi", "data": None})
        if uncertainties and channel["name"] in uncertainties:
            errors = _counts("uncertainties", channel["name"], uncertainties[channel["name"]], n_bins)
            sample_modifiers.append({"name": _staterror_name(channel), "type": "staterror", "data": errors})
        if systematic is not None:
            sample_modifiers.append({"name": systematic_name, "type": "normsys",
                                     "data": {"hi": float(systematic[0]), "lo": float(systematic[1])}})
        extra = [dict(m) for m in (modifiers or {}).get(channel["name"], ())]
        clash = sorted({m.get("name") for m in extra} & {m["name"] for m in sample_modifiers})
        if clash:
            raise WorkspaceError(f"modifiers of channel {channel['name']!r} repeat {clash}, which signal_patch adds itself; leave "
                                 "them out (the POI, lumi, staterror and the systematic are added from the other arguments).")
        operations.append({"op": "add", "path": f"/channels/{index}/samples/0", "value": {"name": name, "data": counts,
                                                                                          "modifiers": sample_modifiers + extra}})
        signal[channel["name"]] = counts
        totals[channel["name"]] = np.sum([s["data"] for s in channel["samples"]], axis=0).tolist()
    lo, hi = poi_bounds if poi_bounds is not None else (0.0, poi_upper_bound(signal, totals))
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise WorkspaceError(f"poi_bounds={poi_bounds!r}; need finite lo < hi, e.g. (0.0, 100.0).")
    for index in sorted((channels.index(c) for c in dropped), reverse=True):
        operations.append({"op": "remove", "path": f"/channels/{index}"})
    observed = [o["name"] for o in background.get("observations", [])]
    for index in sorted((observed.index(c) for c in dropped if c in observed), reverse=True):
        operations.append({"op": "remove", "path": f"/observations/{index}"})
    for m in chosen:
        parameters = measurements[m]["config"].get("parameters", [])
        where = [j for j, p in enumerate(parameters) if p["name"] == poi]
        if where:
            operations.append({"op": "add", "path": f"/measurements/{m}/config/parameters/{where[0]}/bounds", "value": [[lo, hi]]})
        else:
            operations.append({"op": "add", "path": f"/measurements/{m}/config/parameters/-",
                               "value": {"name": poi, "bounds": [[lo, hi]], "inits": [min(max(1.0, lo), hi)]}})
    return SignalPatch(name, tuple(float(v) for v in values), tuple(operations))


def add_signal(background: Mapping[str, Any], yields: Mapping[str, Sequence[float]], **options: Any) -> pyhf.Workspace:
    """The background-only workspace with a new signal (:func:`signal_patch`'s arguments), validated by pyhf.

    Raises:
        WorkspaceError: as :func:`signal_patch`, or the result fails pyhf's schema.
    """
    from ..stats.histfactory import load_workspace
    from .patches import patched_workspace

    workspace = patched_workspace(background, signal_patch(background, yields, **options))
    return load_workspace(dict(workspace))
