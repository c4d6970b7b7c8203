"""Patch scans against pyhf's own hypotest, resumption after a crash, the CLI, and exact exclusion contours."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pyhf
import pytest
from scipy.stats import norm

import _reinterpret_toy as toy
from sbilab.cli import main
from sbilab.exceptions import ConfigError
from sbilab.reinterpret import (
    PatchResult,
    ScanResult,
    ScanSettings,
    exclusion_contours,
    patched_workspace,
    read_patches,
    scan_patches,
    significance,
)

FEW = [(400.0, 100.0), (500.0, 200.0), (600.0, 0.0), (700.0, 200.0)]


def _pyhf_cls(bkg: dict, patch) -> tuple[float, list[float]]:
    """``pyhf.infer.hypotest`` with all its defaults (numpy backend, scipy SLSQP) at mu = 1."""
    workspace = patched_workspace(bkg, patch)
    model = workspace.model()
    obs, expected = pyhf.infer.hypotest(1.0, workspace.data(model), model, return_expected_set=True)
    return float(obs), [float(e) for e in expected]


def test_scan_agrees_with_pyhf_and_a_killed_scan_resumes(tmp_path):
    bkg = toy.background()
    patches = read_patches(toy.write_patches(tmp_path / "R", grid=FEW))
    settings = ScanSettings(backend="numpy")
    journal = tmp_path / "scan.jsonl"
    result = scan_patches(bkg, patches, settings=settings, journal=journal, workers=1, progress=False)
    assert [p.name for p in result.points] == [p.name for p in patches.patches] and result.resumed == 0
    for patch in patches.patches:
        obs, expected = _pyhf_cls(bkg, patch)
        point = result[patch.name]
        assert point.valid and not point.error
        assert point.cls_obs == pytest.approx(obs, abs=1e-3)
        np.testing.assert_allclose(point.cls_expected, expected, atol=1e-3)
        assert point.cls_expected[0] < point.cls_expected[2] < point.cls_expected[4]  # pyhf's order: +2 sigma first
    # kill the scan after two points (and in the middle of writing the third): it resumes with the same numbers
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    again = scan_patches(bkg, patches, settings=settings, journal=journal, workers=1, progress=False)
    assert again.resumed == 2
    for a, b in zip(result.points, again.points):
        assert a.name == b.name and a.cls_obs == pytest.approx(b.cls_obs, abs=1e-4)  # warm starts differ: optimizer tolerance
    assert len(journal.read_text().splitlines()) == 1 + len(FEW)
    with pytest.raises(ConfigError, match="other settings"):
        scan_patches(bkg, patches, settings=ScanSettings(backend="numpy", poi=2.0), journal=journal, workers=1, progress=False)
    # the table round-trips through JSON
    json_path, csv_path = again.write(tmp_path / "out")
    back = ScanResult.from_dict(json.loads(json_path.read_text()))
    assert [p.cls_obs for p in back.points] == [p.cls_obs for p in again.points]
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["name"] for r in rows] == [p.name for p in patches.patches] and float(rows[0]["m1"]) == 400.0


def test_parallel_workers_run_single_threaded_and_record_failures(tmp_path):
    bkg = toy.background()
    patches = read_patches(toy.write_patches(tmp_path / "R", grid=FEW[:2]))
    broken = patches.patches[1].__class__("toy_broken_1", (1.0, 1.0), (
        {"op": "add", "path": "/channels/0/samples/0", "value": {"name": "s", "data": [1.0], "modifiers": [
            {"name": "mu", "type": "normfactor", "data": None}]}},))
    result = scan_patches(bkg, [*patches.patches, broken], settings=ScanSettings(backend="numpy"), workers=2, progress=False)
    assert [p.threads for p in result.points[:2]] == [1, 1]
    for patch in patches.patches:
        assert result[patch.name].cls_obs == pytest.approx(_pyhf_cls(bkg, patch)[0], abs=1e-3)
    assert list(result.errors) == ["toy_broken_1"] and "does not match the workspace" in result.errors["toy_broken_1"]
    assert math.isnan(result["toy_broken_1"].cls_obs)


def test_cli_writes_table_and_contour(tmp_path, capsys):
    folder = toy.write_patches(tmp_path / "R", grid=[(300.0, 0.0), (500.0, 0.0), (500.0, 200.0), (700.0, 0.0)])
    out = tmp_path / "out"
    code = main(["reinterpret", str(folder / "BkgOnly.json"), str(folder), "--labels", "m_heavy,m_light", "--workers", "1",
                 "--backend", "numpy", "--out", str(out), "--no-progress"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["patches"] == 4 and summary["failed"] == {}
    assert {"results.json", "results.csv", "contour.json", "contour.png", "scan.jsonl"} <= {p.name for p in out.iterdir()}
    contour = json.loads((out / "contour.json").read_text())
    assert contour["labels"] == ["m_heavy", "m_light"] and contour["observed"]


def _synthetic(z_obs, shift: float = 0.5) -> ScanResult:
    """A 6x6 grid on [0, 1]^2 whose observed Z is ``z_obs(x, y)``; expected median = observed, ±1σ shifted by ``shift``."""
    points = []
    for x in np.linspace(0.0, 1.0, 6):
        for y in np.linspace(0.0, 1.0, 6):
            z = z_obs(x, y)
            cls = [float(norm.sf(z + s)) for s in (2 * shift, shift, 0.0, -shift, -2 * shift)]
            points.append(PatchResult(f"p_{x:g}_{y:g}", (float(x), float(y)), 1.0, float(norm.sf(z)), tuple(cls), 0.0, True))
    return ScanResult(tuple(points), ("x", "y"))


def test_contour_of_a_linear_significance_is_exact():
    # Z = 3x + y - 0.4 is linear, so the interpolant is exact: the 95% CL contour is the line 3x + y = 0.4 + 1.645
    level = norm.isf(0.05)
    contours = exclusion_contours(_synthetic(lambda x, y: 3 * x + y - 0.4))
    segments = np.array(contours.observed)
    assert len(segments) >= 5
    np.testing.assert_allclose(3 * segments[..., 0] + segments[..., 1], 0.4 + level, atol=1e-12)
    np.testing.assert_allclose(np.array(contours.expected), segments)  # expected median = observed here
    np.testing.assert_allclose(3 * np.array(contours.expected_plus1)[..., 0] + np.array(contours.expected_plus1)[..., 1],
                               0.4 + level - 0.5, atol=1e-12)
    # the ±1σ band is the strip |3x + y - 0.4 - 1.645| < 0.5 inside the unit square: area = 1/3 (both lines cross y = 0..1
    # inside 0 < x < 1)
    area = sum(0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], -1)) - np.dot(p[:, 1], np.roll(p[:, 0], -1)))
               for p in map(np.array, contours.band))
    assert area == pytest.approx(1.0 / 3.0, abs=1e-12)
    assert significance(np.array([0.05]))[0] == pytest.approx(level, abs=1e-15)


def test_contour_needs_a_plane():
    flat = _synthetic(lambda x, y: x)
    with pytest.raises(ConfigError, match="axis 'z' is not one of the scan's labels"):
        exclusion_contours(flat, axes=("x", "z"))
    with pytest.raises(ConfigError, match="at least 3 points"):
        exclusion_contours(flat, fix={"x": 0.0, "y": 0.0})
