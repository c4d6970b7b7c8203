"""HistFactory workspaces from histograms (one or many channels), schema errors, patches, the ABCD reference and the ATLAS sbottom likelihood."""

from __future__ import annotations

import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pyhf
import pytest

from sbilab.exceptions import FitError, WorkspaceError
from sbilab.stats import binned

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pyhf" / "ins1748602-sbottom-multib-probability-models.tar.gz"


def _workspace(signal=(5.0, 10.0)):
    return binned.build_workspace(
        signal={"sig": list(signal)},
        backgrounds={"bkg": [50.0, 60.0]},
        observed=[52.0, 65.0],
        normsys={"bkg": {"xsec": (0.9, 1.1)}},
        histosys={"bkg": {"jes": ([48.0, 61.0], [52.0, 59.0])}},
        staterror={"bkg": [2.0, 3.0]},
    )


def test_build_workspace_gives_the_expected_model():
    ws = _workspace()
    with binned.numpy_minuit():
        model = ws.model()
        assert model.config.poi_name == "mu"
        assert set(model.config.parameters) == {"mu", "xsec", "jes", "staterror_SR"}
        # at nominal parameters and mu = 2 the expectation is 2 s + b
        pars = np.asarray(model.config.suggested_init(), dtype=float)
        pars[model.config.poi_index] = 2.0
        np.testing.assert_allclose(model.expected_actualdata(pars), [60.0, 80.0])
    assert list(ws.data(model, include_auxdata=False)) == [52.0, 65.0]


def test_json_roundtrip_and_patch(tmp_path):
    ws = _workspace()
    text = binned.to_json(ws, tmp_path / "ws.json")
    again = binned.load_workspace(tmp_path / "ws.json")
    assert json.loads(text) == json.loads(binned.to_json(again))
    patch = [{"op": "replace", "path": "/channels/0/samples/0/data", "value": [1.0, 2.0]}]
    patched = binned.apply_patch(ws, patch)
    assert json.loads(binned.to_json(patched)) == json.loads(binned.to_json(_workspace(signal=(1.0, 2.0))))
    (tmp_path / "patch.json").write_text(json.dumps(patch))
    assert dict(binned.apply_patch(ws, tmp_path / "patch.json")) == dict(patched)


def test_bad_workspaces_raise_workspace_error():
    with pytest.raises(WorkspaceError, match="bins"):
        binned.build_workspace(signal={"s": [1.0]}, backgrounds={"b": [1.0, 2.0]}, observed=[1.0, 2.0])
    with pytest.raises(WorkspaceError, match="negative"):
        binned.build_workspace(signal={"s": [1.0, -1.0]}, backgrounds={}, observed=[1.0, 2.0])
    with pytest.raises(WorkspaceError, match="unknown sample"):
        binned.build_workspace(signal={"s": [1.0]}, backgrounds={}, observed=[1.0], normsys={"ttbar": {"x": (0.9, 1.1)}})
    spec = json.loads(binned.to_json(_workspace()))
    spec["channels"][0]["samples"][1]["modifiers"][0]["type"] = "notamodifier"
    with pytest.raises(WorkspaceError, match="schema"):
        binned.load_workspace(spec)
    with pytest.raises(WorkspaceError, match="does not apply"):
        binned.apply_patch(_workspace(), [{"op": "remove", "path": "/channels/7"}])
    with pytest.raises(WorkspaceError, match=r"pyhf rejects .*'SR': \['sig', 'bkg'\].*expected 3 size sample data but got 2"):
        binned.apply_patch(_workspace(), [{"op": "replace", "path": "/channels/0/samples/0/data", "value": [1.0, 2.0, 3.0]}])
    with pytest.raises(WorkspaceError, match="entries"):
        binned.workspace_hypotest(_workspace(), 1.0, data=[1.0, 2.0])


def test_backend_is_restored_and_hypotest_matches_pyhf():
    before = pyhf.get_backend()
    ws = _workspace()
    res = binned.workspace_hypotest(ws, 1.0)
    assert pyhf.get_backend()[0] is before[0] and pyhf.get_backend()[1] is before[1]
    with binned.numpy_minuit():
        model = ws.model()
        cls = float(pyhf.infer.hypotest(1.0, ws.data(model), model, test_stat="qtilde"))
    assert res.valid and res.cls_obs == pytest.approx(cls, rel=1e-3)
    json.dumps(res.to_dict())


@pytest.mark.slow
def test_atlas_sbottom_reinterpretation(tmp_path):
    if not DATA.exists():
        pytest.skip(f"published ATLAS workspace not found at {DATA} (shared/data beside the repository)")
    with tarfile.open(DATA) as tar:
        for name in ("RegionA/BkgOnly.json", "RegionA/patch.sbottom_1300_205_60.json"):
            tar.extract(name, tmp_path, filter="data")
    ws = binned.load_workspace(tmp_path / "RegionA" / "BkgOnly.json")
    ws = binned.apply_patch(ws, tmp_path / "RegionA" / "patch.sbottom_1300_205_60.json")
    res = binned.workspace_hypotest(ws, 1.0)
    assert res.valid
    assert res.cls_obs == pytest.approx(0.2444363, rel=1e-3)  # pyhf's published regression value


def test_fits_are_remembered_and_a_scan_reuses_them():
    model = binned.PyhfModel(_workspace())
    calls = []
    fit = model._fit
    model._fit = lambda data, poi: calls.append(poi) or fit(data, poi)
    first = binned.workspace_hypotest(model, 1.0)
    n_first = len(calls)
    twice_nll, pars, ok = model.fit(model.observed)
    pars[:] = np.nan  # the caller's copy; the remembered fit is untouched
    assert np.isfinite(model.fit(model.observed)[1]).all()
    again = binned.workspace_hypotest(model, 1.0)
    assert len(calls) == n_first and again.cls_obs == first.cls_obs
    binned.workspace_hypotest(model, 2.0)  # a new mu needs only its own fixed-mu fits (observed and Asimov)
    assert len(calls) == n_first + 2 and calls[-2:] == [2.0, 2.0]
    with binned.numpy_minuit(tolerance=1e-3):
        cls = float(pyhf.infer.hypotest(1.0, model.observed, model.model, test_stat="qtilde"))
    assert first.cls_obs == pytest.approx(cls, rel=1e-3)


# ---------------------------------------------------------------------------- multi-channel workspaces
ABCD_BACKGROUND = {"A": (), "B": ("tau_B",), "C": ("tau_C",), "D": ("tau_B", "tau_C")}


def _abcd(observed=(10.0, 100.0, 100.0, 1000.0), signal=(1.0, 0.0, 0.0, 0.0), **options):
    """The four-region ABCD model: background A = mu_b, B = mu_b tau_B, C = mu_b tau_C, D = mu_b tau_B tau_C."""
    channels = [
        binned.Channel(region, [n], [binned.Sample("background", [1.0], normfactors=("mu_b", *ABCD_BACKGROUND[region])),
                                     binned.Sample("signal", [s], normfactors=("mu",))])
        for region, n, s in zip("ABCD", observed, signal)
    ]
    return binned.build_workspace(channels, **options)


def _expected_by_channel(ws, values):
    with binned.numpy_minuit():
        model = ws.model()
        pars = np.asarray(model.config.suggested_init(), dtype=float)
        for name, value in values.items():
            pars[model.config.par_slice(name)] = value
        expected = np.asarray(model.expected_actualdata(pars))
        return {c: expected[model.config.channel_slices[c]].tolist() for c in model.config.channels}


def test_abcd_workspace_shares_normfactors_across_channels_and_round_trips_through_pyhf(tmp_path):
    ws = _abcd(signal=(1.0, 0.2, 0.1, 0.0))
    again = pyhf.Workspace(json.loads(binned.to_json(ws, tmp_path / "abcd.json")))  # plain pyhf, from the JSON file
    mu_b, tau_b, tau_c, mu = 7.0, 3.0, 5.0, 2.0
    exact = {"A": [mu_b + mu * 1.0], "B": [mu_b * tau_b + mu * 0.2], "C": [mu_b * tau_c + mu * 0.1], "D": [mu_b * tau_b * tau_c]}
    for workspace in (ws, again, binned.load_workspace(tmp_path / "abcd.json")):
        got = _expected_by_channel(workspace, {"mu_b": mu_b, "tau_B": tau_b, "tau_C": tau_c, "mu": mu})
        assert set(got) == set(exact) and all(got[c] == pytest.approx(exact[c], rel=1e-12) for c in exact)
    with binned.numpy_minuit():
        model = again.model()
        assert sorted(model.config.parameters) == ["mu", "mu_b", "tau_B", "tau_C"]  # one parameter per shared name
        assert model.config.poi_name == "mu"
        assert list(again.data(model, include_auxdata=False)) == [10.0, 100.0, 100.0, 1000.0]


def test_abcd_reference_of_abcd_pyhf():
    # issue 15's reference (abcd-pyhf 0.0.7): observed 10, 100, 100, 1000, signal 1 in A, no
    # uncertainties, abcd-pyhf's bounds (mu_b <= 10 + 5 sqrt(10), tau <= 5 x estimate, mu <= 26) and
    # its CLs scan over mu = 0, 1, ..., 26 with linear interpolation
    ws = _abcd(poi_bounds=(0.0, 26.0), bounds={"mu_b": (0.0, 10.0 + 5.0 * math.sqrt(10.0)), "tau_B": (0.0, 50.0), "tau_C": (0.0, 50.0)})
    model = binned.PyhfModel(ws, tolerance=1e-4)
    limit = binned.workspace_upper_limit(model, scan=np.linspace(0.0, 26.0, 27))
    assert limit.observed == pytest.approx(7.962507, rel=2e-5)  # measured 7.962474
    assert limit.expected == pytest.approx((3.979234, 5.557391, 7.962507, 11.797208, 16.974624), rel=2e-5)
    with binned.numpy_minuit(tolerance=1e-6):
        pars, errors = pyhf.infer.mle.fixed_poi_fit(0.0, model.observed, model.model, return_uncertainties=True).T
    index = model.model.config.par_slice("mu_b").start
    # background-only fit: mu_b = B C / D = 10; the exact error from the Fisher information of the
    # three log-yields, sigma(mu_b) = 10 sqrt([I^-1]_00) with I = sum_i n_i g_i g_i^T = 1.3174
    # (abcd-pyhf quotes 1.316 from scipy's approximate Hessian; minuit's numerical one is as close)
    fisher = np.array([[1210.0, 1100.0, 1100.0], [1100.0, 1100.0, 1000.0], [1100.0, 1000.0, 1100.0]])
    assert pars[index] == pytest.approx(10.0, rel=1e-5)
    assert errors[index] == pytest.approx(10.0 * math.sqrt(np.linalg.inv(fisher)[0, 0]), rel=0.01)
    assert errors[index] == pytest.approx(1.316, rel=0.01)


def test_signal_and_control_region_model_with_every_modifier():
    sr = binned.Channel("SR", [60.0, 70.0], [
        binned.Sample("signal", [5.0, 10.0], normfactors=("mu",), normsys={"sig_xsec": (0.9, 1.2)}, lumi=True),
        binned.Sample("ttbar", [40.0, 50.0], normfactors=("k_tt",), histosys={"jes": ([38.0, 52.0], [43.0, 47.0])},
                      staterror=[2.0, 3.0], lumi=True),
    ])
    cr = binned.Channel("CR", [400.0, 300.0, 200.0], [
        binned.Sample("ttbar", [390.0, 310.0, 190.0], normfactors=("k_tt",), histosys={"jes": ([380.0, 300.0, 185.0], [400.0, 320.0, 195.0])},
                      shapesys={"cr_shape": [10.0, 10.0, 10.0]}, lumi=True),
        binned.Sample("fakes", [10.0, 20.0, 30.0], shapefactors=("fake_shape",)),
    ])
    ws = binned.build_workspace([sr, cr], lumi_uncertainty=0.02, bounds={"k_tt": (0.5, 2.0)}, inits={"k_tt": 1.1},
                                fixed={"fake_shape": 1.5})
    with binned.numpy_minuit():
        model = pyhf.Workspace(dict(ws)).model()
        c = model.config
        assert c.param_set("fake_shape").n_parameters == 3 and c.param_set("staterror_SR").n_parameters == 2
        assert c.suggested_bounds()[c.par_slice("k_tt")][0] == [0.5, 2.0] and c.suggested_init()[c.par_slice("k_tt").start] == 1.1
        assert c.suggested_fixed()[c.par_slice("fake_shape")] == [True] * 3
        assert c.param_set("lumi").sigmas == [0.02]
    # jes at +1 gives hi_data exactly, sig_xsec at -1 gives the lo factor, lumi multiplies, fake_shape fixed at 1.5
    got = _expected_by_channel(ws, {"mu": 2.0, "k_tt": 1.25, "jes": 1.0, "sig_xsec": -1.0, "lumi": 1.04, "fake_shape": 1.5})
    exact = {
        "SR": [1.04 * (2 * 0.9 * 5.0 + 1.25 * 43.0), 1.04 * (2 * 0.9 * 10.0 + 1.25 * 47.0)],
        "CR": [1.04 * 1.25 * 400.0 + 1.5 * 10.0, 1.04 * 1.25 * 320.0 + 1.5 * 20.0, 1.04 * 1.25 * 195.0 + 1.5 * 30.0],
    }
    assert set(got) == set(exact) and all(got[c] == pytest.approx(exact[c], rel=1e-12) for c in exact)
    res = binned.workspace_hypotest(ws, 1.0)
    with binned.numpy_minuit():
        cls = float(pyhf.infer.hypotest(1.0, ws.data(model), model, test_stat="qtilde"))
    assert res.valid and res.cls_obs == pytest.approx(cls, rel=2e-3)


def _ch(name="A", observed=(1.0,), **sample):
    return binned.Channel(name, list(observed), [binned.Sample(sample.pop("sample", "s"), sample.pop("data", [1.0] * len(observed)),
                                                               normfactors=sample.pop("normfactors", ("mu",)), **sample)])


@pytest.mark.parametrize(
    ("channels", "options", "message"),
    [
        ([_ch("A"), _ch("A")], {}, "channel name 'A' is empty or used twice"),
        ([binned.Channel("A", [1.0], [binned.Sample("s", [1.0], normfactors=("mu",)), binned.Sample("s", [2.0])])], {},
         r"channel 'A': sample names \['s', 's'\] repeat"),
        ([_ch("A", (1.0, 2.0), data=[1.0])], {}, r"channel 'A', sample 's': data has 1 bins but its channel's observed histogram has 2"),
        ([_ch("A", histosys={"jes": ([1.0, 2.0], [1.0])})], {}, "channel 'A', sample 's': histosys 'jes' lo has 2 bins but its channel's observed histogram has 1"),
        ([_ch("A", normsys={"x": (0.0, 1.1)})], {}, "normsys 'x' has factors"),
        ([_ch("A", normsys={"mu": (0.9, 1.1)})], {}, "modifier 'mu' is a normsys here but a normfactor elsewhere"),
        ([_ch("A", shapefactors=("f",)), _ch("B", (1.0, 2.0), shapefactors=("f",))], {}, "per-bin modifier 'f' is shared by channels with 1 and 2 bins"),
        ([_ch("A", normfactors=("k",))], {}, "the POI 'mu' is not a normfactor of any sample"),
        ([_ch("A")], {"bounds": {"mu_b": (0.0, 1.0)}}, r"bounds names unknown parameter\(s\) \['mu_b'\]"),
        ([_ch("A")], {"bounds": {"mu": (0.0, 1.0)}}, "give its bounds with poi_bounds"),
        ([_ch("A")], {"poi_bounds": (1.0, 1.0)}, "need lo < hi"),
        ([_ch("A", lumi=True)], {}, "lumi_uncertainty = None but some sample has lumi=True"),
        ([_ch("A")], {"lumi_uncertainty": 0.02}, "no sample has lumi=True"),
        ([_ch("A")], {"observed": [1.0]}, "either channels=.* or the one-channel keywords"),
        ([], {}, "non-empty list of Channel"),
        ([_ch("A", normfactors="mu")], {}, "sequences of names"),
        ([_ch("A", observed=(-1.0,))], {}, "observed has negative"),
    ],
)
def test_bad_multichannel_workspaces_name_channel_and_sample(channels, options, message):
    with pytest.raises(WorkspaceError, match=message):
        binned.build_workspace(channels, **options)


def test_pyhf_errors_are_wrapped_with_channel_and_sample_names():
    spec = json.loads(binned.to_json(_workspace()))
    spec["measurements"][0]["config"]["poi"] = "not_a_parameter"
    ws = pyhf.Workspace(spec)  # the schema cannot see it; the model can
    with pytest.raises(WorkspaceError, match=r"pyhf rejects the workspace \(channels and samples \{'SR': \['sig', 'bkg'\]\}\)"):
        binned.PyhfModel(ws)


def test_model_level_functions_refuse_a_workspace_and_name_the_workspace_level_ones():
    from sbilab.stats import asymptotic, hypotest, upper_limit

    ws = _workspace()
    with pytest.raises(WorkspaceError, match=r"for a pyhf workspace call sbilab.stats.binned.workspace_hypotest\(workspace"):
        hypotest(ws, ws.data(ws.model()), 1.0)
    with pytest.raises(WorkspaceError, match=r"sbilab.stats.binned.workspace_upper_limit"):
        upper_limit(ws, None)
    with pytest.raises(FitError, match="must be a ProfileModel"):
        asymptotic.hypotest(object(), [1.0], 1.0)
    with pytest.raises(WorkspaceError, match="workspace_hypotest takes a pyhf.Workspace or a PyhfModel"):
        binned.workspace_hypotest({"channels": []}, 1.0)
    # the two names are distinct objects: no alias keeps the old collision
    assert not hasattr(binned, "hypotest") and not hasattr(binned, "upper_limit")
