"""New signals in a published background-only likelihood by channel name; the real ATLAS sbottom patches against pyhf."""

from __future__ import annotations

import json

import pytest

import _reinterpret_toy as toy
from sbilab.exceptions import WorkspaceError
from sbilab.reinterpret import (
    ScanSettings,
    add_signal,
    evaluate_patch,
    patched_workspace,
    poi_upper_bound,
    read_background,
    read_patches,
    signal_patch,
)

ATLAS = "pyhf/ins1748602-sbottom-multib-probability-models.tar.gz"


def test_signal_by_channel_name_rebuilds_the_published_patch():
    bkg = toy.background()
    s = toy.signal_yields(400.0, 100.0)
    published = dict(patched_workspace(bkg, _toy_patch(400.0, 100.0)))
    ours = dict(add_signal(bkg, {"SR": s, "CR": [0.02 * sum(s)]}, uncertainties={"SR": [0.1 * v for v in s]},
                           systematic=(1.1, 0.9), systematic_name="sig_xsec", drop=["VR*"]))
    assert ours["channels"] == published["channels"]  # same samples, modifiers and order; the VR removed
    assert [o["name"] for o in ours["observations"]] == ["SR", "CR"]
    # the POI's bounds: best bin s = 16.17 over b = 10: (2 sqrt(10) + 3) / 16.17 = 0.577 -> max(10, 5.77) = 10
    mu = [p for p in ours["measurements"][0]["config"]["parameters"] if p["name"] == "mu"][0]
    assert mu["bounds"] == [[0.0, 10.0]] and mu["inits"] == [1.0]
    weak = dict(add_signal(bkg, {"SR": [0.0, 0.0, 0.05]}))
    mu = [p for p in weak["measurements"][0]["config"]["parameters"] if p["name"] == "mu"][0]
    assert mu["bounds"] == [[0.0, 2000.0]]  # (2 sqrt(10) + 3) / 0.05 = 186.5 -> 1865 -> 2000
    assert [c["name"] for c in weak["channels"]] == ["SR", "VR", "CR"]  # nothing dropped unless asked
    patch = signal_patch(bkg, {"SR": s}, name="mine", values=(400.0, 100.0), poi_bounds=(0.0, 30.0))
    assert patch.name == "mine" and patch.values == (400.0, 100.0)
    assert patch.operations[-1] == {"op": "add", "path": "/measurements/0/config/parameters/-",
                                    "value": {"name": "mu", "bounds": [[0.0, 30.0]], "inits": [1.0]}}


def _toy_patch(m1: float, m2: float):
    from sbilab.reinterpret import SignalPatch

    return SignalPatch("toy", (m1, m2), tuple(toy.patch(m1, m2)))


def test_poi_upper_bound_closed_form():
    assert poi_upper_bound({"a": [1.0, 0.0]}, {"a": [100.0, 1.0]}) == 500.0  # (20 + 3) / 1 = 23 -> 230 -> 500
    assert poi_upper_bound({"a": [30.0]}, {"a": [0.0]}) == 10.0  # 3 / 30 = 0.1 -> 1 -> at least 10
    assert poi_upper_bound({"a": [0.0]}, {"a": [5.0]}) == 10.0  # no signal: the default bound
    assert poi_upper_bound({"a": [0.03]}, {"a": [0.0]}) == 1000.0  # 3 / 0.03 = 100 -> 1000 exactly


def test_bad_signals_raise_named_errors():
    bkg = toy.background()
    with pytest.raises(WorkspaceError, match=r"channels \['SRX'\] are not in the workspace.*\['SR', 'VR', 'CR'\]"):
        signal_patch(bkg, {"SRX": [1.0]})
    with pytest.raises(WorkspaceError, match="yields of channel 'SR' has 2 bins; the channel has 3"):
        signal_patch(bkg, {"SR": [1.0, 2.0]})
    with pytest.raises(WorkspaceError, match="uncertainties of channel 'SR' = .*>= 0"):
        signal_patch(bkg, {"SR": [1.0, 2.0, 3.0]}, uncertainties={"SR": [1.0, -1.0, 0.0]})
    with pytest.raises(WorkspaceError, match=r"channels \['VR'\] get signal yields but match drop"):
        signal_patch(bkg, {"VR": [1.0]}, drop=["VR*"])
    with pytest.raises(WorkspaceError, match="already has a sample 'ttbar'"):
        signal_patch(bkg, {"SR": [1.0, 1.0, 1.0]}, name="ttbar")
    with pytest.raises(WorkspaceError, match="repeat \\['lumi'\\]"):
        signal_patch(bkg, {"SR": [1.0, 1.0, 1.0]}, modifiers={"SR": [{"name": "lumi", "type": "lumi", "data": None}]})
    with pytest.raises(WorkspaceError, match="poi_bounds"):
        signal_patch(bkg, {"SR": [1.0, 1.0, 1.0]}, poi_bounds=(5.0, 1.0))
    with pytest.raises(WorkspaceError, match="systematic="):
        signal_patch(bkg, {"SR": [1.0, 1.0, 1.0]}, systematic=(1.1, -0.9))
    with pytest.raises(WorkspaceError, match="no measurement 'other'"):
        signal_patch(bkg, {"SR": [1.0, 1.0, 1.0]}, measurement="other")
    as_normsys = json.loads(json.dumps(bkg))
    as_normsys["measurements"][0]["config"]["poi"] = "jes"
    with pytest.raises(WorkspaceError, match="POI 'jes' is already a normsys modifier"):
        signal_patch(as_normsys, {"SR": [1.0, 1.0, 1.0]})


def test_atlas_sbottom_cls_agree_with_pyhf_and_a_published_patch_is_rebuilt_from_its_yields(shared_data):
    archive = shared_data / ATLAS
    if not archive.is_file():
        pytest.skip(f"{archive} is absent")
    bkg = dict(read_background("RegionA/BkgOnly.json", archive=archive))
    patches = read_patches(archive, region="RegionA", labels=("m_sb", "m_chi2", "m_chi1"))
    assert len(patches) == 217 and patches.labels == ("m_sb", "m_chi2", "m_chi1")
    published = patches.select(["sbottom_1300_205_60"]).patches[0]
    assert published.values == (1300.0, 205.0, 60.0)
    result, _ = evaluate_patch(bkg, published, ScanSettings())
    assert result.cls_obs == pytest.approx(0.2444363, abs=5e-5)  # pyhf's own regression value (scipy), shared/data/README.md
    assert result.cls_expected[2] == pytest.approx(0.3843220, abs=5e-5)  # pyhf.infer.hypotest, defaults, measured for this test
    # the same signal given by channel name: yields, MC-stat uncertainties and the other modifiers of the published sample
    added = {op["path"].split("/")[2]: op["value"] for op in published.operations if op["op"] == "add"}
    sr, cr = added["0"], added["2"]

    def staterror(sample):
        return next(m["data"] for m in sample["modifiers"] if m["type"] == "staterror")

    def others(sample):
        return [m for m in sample["modifiers"] if m["type"] not in ("normfactor", "lumi", "staterror")]

    rebuilt = signal_patch(bkg, {"SR_meff": sr["data"], "CRtt_meff": cr["data"]}, name=published.name,
                           uncertainties={"SR_meff": staterror(sr), "CRtt_meff": staterror(cr)},
                           modifiers={"SR_meff": others(sr), "CRtt_meff": others(cr)}, drop=["VR*"], poi_bounds=(0.0, 10.0))
    again, _ = evaluate_patch(bkg, rebuilt, ScanSettings())
    assert again.cls_obs == pytest.approx(result.cls_obs, abs=1e-9)
    assert again.cls_expected == pytest.approx(result.cls_expected, abs=1e-9)
    # region B, the point where minuit at tolerance 0.1 was 1.7e-3 off pyhf's scipy result (0.908133, issue 16)
    bkg_b = dict(read_background("RegionB/BkgOnly.json", archive=archive))
    point_b = read_patches(archive, region="RegionB").select(["sbottom_1000_650_60"]).patches[0]
    result_b, _ = evaluate_patch(bkg_b, point_b, ScanSettings())
    assert result_b.cls_obs == pytest.approx(0.908133, abs=1e-4)


def test_weak_signal_limit_inside_the_widened_bounds_agrees_with_pyhf():
    bkg = toy.background()
    patch = signal_patch(bkg, {"SR": [0.5, 1.0, 2.0]}, drop=["VR*"], name="weak")
    # best bin s = 2 over b = 10: (2 sqrt(10) + 3) / 2 = 4.66 -> 46.6 -> bound 50
    assert patch.operations[-1]["value"] == {"name": "mu", "bounds": [[0.0, 50.0]], "inits": [1.0]}
    result, _ = evaluate_patch(bkg, patch, ScanSettings(backend="numpy", upper_limits=True))
    # pyhf 0.7.6, pyhf.infer.intervals.upper_limits.upper_limit(data, model, level=0.05) (TOMS 748) on add_signal's workspace
    assert result.upper_limit == pytest.approx(4.671308, rel=1e-3)
    assert result.upper_limits_expected == pytest.approx([1.868394, 2.580933, 3.737476, 5.505607, 7.879967], rel=1e-3)
