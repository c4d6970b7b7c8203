"""A small published-likelihood toy for the reinterpretation tests: a background-only workspace
(signal region + validation region + control region, like the ATLAS sbottom search) and signal
patches on a grid of two masses, in the per-patch JSON-Patch format."""

from __future__ import annotations

import json
import math
from pathlib import Path


def background() -> dict:
    """Background-only specification: SR (3 bins), VR (1 bin), CR (1 bin), POI 'mu' not yet in any sample."""

    def bkg(counts, scale):
        return {"name": "ttbar", "data": counts, "modifiers": [
            {"name": "mu_ttbar", "type": "normfactor", "data": None},
            {"name": "jes", "type": "normsys", "data": {"hi": 1.05, "lo": 0.95}},
            {"name": "lumi", "type": "lumi", "data": None}]}

    channels = [
        {"name": "SR", "samples": [bkg([50.0, 30.0, 10.0], 1.0)]},
        {"name": "VR", "samples": [bkg([80.0], 1.0)]},
        {"name": "CR", "samples": [bkg([400.0], 1.0)]},
    ]
    for c in channels:
        n = len(c["samples"][0]["data"])
        c["samples"][0]["modifiers"].append({"name": f"staterror_{c['name']}", "type": "staterror", "data": [0.05 * v for v in c["samples"][0]["data"]][:n]})
    return {
        "channels": channels,
        "observations": [{"name": "SR", "data": [53.0, 27.0, 13.0]}, {"name": "VR", "data": [83.0]}, {"name": "CR", "data": [405.0]}],
        "measurements": [{"name": "meas", "config": {"poi": "mu", "parameters": [
            {"name": "lumi", "auxdata": [1.0], "sigmas": [0.017], "bounds": [[0.915, 1.085]], "inits": [1.0]}]}}],
        "version": "1.0.0",
    }


def signal_yields(m1: float, m2: float) -> list[float]:
    """Signal in the three SR bins: falls with the heavy mass m1, shifts to high bins with the splitting m1 - m2."""
    total = 60.0 * math.exp(-(m1 - 300.0) / 150.0)
    share = min(max((m1 - m2) / m1, 0.05), 0.95)
    return [total * (1 - share) * 0.7, total * 0.3, total * share * 0.7]


def patch(m1: float, m2: float, *, control: bool = True) -> list[dict]:
    """The published conventions: signal added to SR (and CR), the VR removed."""
    s = signal_yields(m1, m2)
    sample = {"name": "signal", "data": s, "modifiers": [
        {"name": "mu", "type": "normfactor", "data": None},
        {"name": "lumi", "type": "lumi", "data": None},
        {"name": "staterror_SR", "type": "staterror", "data": [0.1 * v for v in s]},
        {"name": "sig_xsec", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}}]}
    ops = [{"op": "add", "path": "/channels/0/samples/0", "value": sample}]
    if control:
        ops.append({"op": "add", "path": "/channels/2/samples/0", "value": {"name": "signal", "data": [0.02 * sum(s)], "modifiers": [
            {"name": "mu", "type": "normfactor", "data": None}, {"name": "lumi", "type": "lumi", "data": None},
            {"name": "sig_xsec", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}}]}})
    ops.append({"op": "remove", "path": "/channels/1"})
    return ops


GRID = [(m1, m2) for m1 in (300.0, 400.0, 500.0, 600.0, 700.0) for m2 in (0.0, 100.0, 200.0) if m2 < m1]


def write_patches(folder: Path, grid=GRID) -> Path:
    """``folder/BkgOnly.json`` and one ``patch.toy_<m1>_<m2>.json`` per grid point; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "BkgOnly.json").write_text(json.dumps(background()))
    for m1, m2 in grid:
        (folder / f"patch.toy_{m1:g}_{m2:g}.json").write_text(json.dumps(patch(m1, m2)))
    return folder
