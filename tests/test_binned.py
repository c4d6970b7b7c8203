"""HistFactory workspaces from histograms, schema errors, patches, and the published ATLAS sbottom likelihood."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pyhf
import pytest

from sbilab.exceptions import WorkspaceError
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
    with pytest.raises(WorkspaceError, match="entries"):
        binned.hypotest(_workspace(), 1.0, data=[1.0, 2.0])


def test_backend_is_restored_and_hypotest_matches_pyhf():
    before = pyhf.get_backend()
    ws = _workspace()
    res = binned.hypotest(ws, 1.0)
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
    res = binned.hypotest(ws, 1.0)
    assert res.valid
    assert res.cls_obs == pytest.approx(0.2444363, rel=1e-3)  # pyhf's published regression value


def test_fits_are_remembered_and_a_scan_reuses_them():
    model = binned.PyhfModel(_workspace())
    calls = []
    fit = model._fit
    model._fit = lambda data, poi: calls.append(poi) or fit(data, poi)
    first = binned.hypotest(model, 1.0)
    n_first = len(calls)
    twice_nll, pars, ok = model.fit(model.observed)
    pars[:] = np.nan  # the caller's copy; the remembered fit is untouched
    assert np.isfinite(model.fit(model.observed)[1]).all()
    again = binned.hypotest(model, 1.0)
    assert len(calls) == n_first and again.cls_obs == first.cls_obs
    binned.hypotest(model, 2.0)  # a new mu needs only its own fixed-mu fits (observed and Asimov)
    assert len(calls) == n_first + 2 and calls[-2:] == [2.0, 2.0]
    with binned.numpy_minuit(tolerance=1e-3):
        cls = float(pyhf.infer.hypotest(1.0, model.observed, model.model, test_stat="qtilde"))
    assert first.cls_obs == pytest.approx(cls, rel=1e-3)
