"""The published unbinned result: ATLAS columns, HDF5 + JSON round trip, histograms with bands, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbilab.exceptions import ConfigError, InvalidEventsError, PublishError, ShapeMismatchError
from sbilab.publish import inspect, save_results
from sbilab.unfolding import UnfoldedResult, read_pandas_table

N = 2000


def _result() -> UnfoldedResult:
    g = torch.Generator().manual_seed(0)
    events = torch.stack([20 + 10 * torch.rand(N, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)], 1)
    nominal = 0.5 + torch.rand(N, generator=g, dtype=torch.float64)
    return UnfoldedResult(
        events, ("pt", "eta"), ("GeV", ""), nominal,
        weights_ensemble=nominal * (1 + 0.05 * torch.randn(3, N, generator=g, dtype=torch.float64)),
        weights_bootstrap_mc=nominal * torch.poisson(torch.ones(4, N, dtype=torch.float64), generator=g),
        weights_bootstrap_data=nominal * torch.poisson(torch.ones(5, N, dtype=torch.float64), generator=g),
        weights_systematics={"jes_up": nominal * (1 + 0.1 * events[:, 1].tanh()), "pileup": nominal * 1.02},
        iterations=5, settings={"method": "omnifold", "epochs": 20},
    )


def test_columns_follow_the_atlas_names():
    names = list(_result().columns())
    assert names == (["weights_nominal"] + [f"weights_ensemble_{i}" for i in range(3)] + [f"weights_bootstrap_mc_{i}" for i in range(4)]
                     + [f"weights_bootstrap_data_{i}" for i in range(5)] + ["weights_jes_up", "weights_pileup"])


def test_round_trip_keeps_everything(tmp_path):
    res = _result()
    path = res.save(tmp_path / "unfolded.h5", metadata={"analysis": "toy"})
    spec = inspect(path)
    assert spec["kind"] == "unfolded_events" and spec["spec"]["bootstrap_data"] == 5 and spec["metadata"] == {"analysis": "toy"}
    back = UnfoldedResult.load(path)
    assert back.observables == ("pt", "eta") and back.units == ("GeV", "") and back.iterations == 5
    assert back.settings == {"method": "omnifold", "epochs": 20}
    torch.testing.assert_close(back.events, res.events, rtol=0, atol=0)
    for (name, a), (name_b, b) in zip(res.columns().items(), back.columns().items()):
        assert name == name_b
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(PublishError, match="already exists"):  # nothing already written is lost
        res.save(path)
    assert UnfoldedResult.load(path).replicas("bootstrap_mc") == 4


def test_histogram_band_from_the_reloaded_file(tmp_path):
    res = UnfoldedResult.load(_result().save(tmp_path / "u.h5"))
    edges = [20.0, 22.5, 25.0, 27.5, 30.0]
    band = res.histogram("pt", edges)
    pt = res.events[:, 0].numpy()
    cols = {k: v.numpy() for k, v in res.columns().items()}
    h = {k: np.histogram(pt, edges, weights=w)[0] for k, w in cols.items()}
    np.testing.assert_allclose(band.nominal.numpy(), h["weights_nominal"], rtol=1e-12)
    boot = np.stack([h[f"weights_bootstrap_data_{i}"] for i in range(5)])
    np.testing.assert_allclose(band.covariance_data.numpy(), np.cov(boot.T), rtol=1e-10)
    mc = np.stack([h[f"weights_bootstrap_mc_{i}"] for i in range(4)])
    np.testing.assert_allclose(band.covariance_mc.numpy(), np.cov(mc.T), rtol=1e-10)
    ens = np.stack([h[f"weights_ensemble_{i}"] for i in range(3)])
    np.testing.assert_allclose(band.covariance_ensemble.numpy(), np.cov(ens.T), rtol=1e-10)
    shifts = [h["weights_jes_up"] - h["weights_nominal"], h["weights_pileup"] - h["weights_nominal"]]
    np.testing.assert_allclose(band.shifts["pileup"].numpy(), shifts[1], rtol=1e-10)
    syst = sum(np.outer(s, s) for s in shifts)
    total = np.cov(boot.T) + np.cov(mc.T) + np.cov(ens.T) + syst
    np.testing.assert_allclose(band.error.numpy(), np.sqrt(np.diag(total)), rtol=1e-10)


def test_two_dimensional_and_density_histograms():
    res = _result()
    band = res.histogram(["pt", "eta"], [[20, 25, 30], np.linspace(-3, 3, 7).tolist()])
    ref, _, _ = np.histogram2d(res.events[:, 0].numpy(), res.events[:, 1].numpy(), [[20, 25, 30], np.linspace(-3, 3, 7)],
                               weights=res.weights_nominal.numpy())
    np.testing.assert_allclose(band.nominal.numpy(), ref, rtol=1e-12)
    assert band.nominal.shape == (2, 6) and band.error.shape == (2, 6) and band.covariance.shape == (12, 12)
    dens = res.histogram(("eta", "pt"), 4, ranges=[(-2, 2), (20, 30)], density=True)
    volume = 1.0 * 2.5
    assert float(dens.nominal.sum() * volume) == pytest.approx(1.0) and float(dens.bootstrap_data[2].sum() * volume) == pytest.approx(1.0)
    one = res.histogram("eta", 10)  # integer bins over the events' range
    assert float(one.nominal.sum()) == pytest.approx(float(res.weights_nominal.sum()))


def test_bad_input_is_named(tmp_path):
    ev, w = torch.randn(10, 1), torch.ones(10)
    with pytest.raises(ShapeMismatchError, match="weights_nominal"):
        UnfoldedResult(ev, ("x",), ("",), torch.ones(9))
    with pytest.raises(ShapeMismatchError, match=r"weights_bootstrap_data_0 has shape \(11,\)"):
        UnfoldedResult(ev, ("x",), ("",), w, weights_bootstrap_data=torch.ones(2, 11))
    with pytest.raises(InvalidEventsError, match="positive sum"):
        UnfoldedResult(ev, ("x",), ("",), torch.zeros(10))
    with pytest.raises(InvalidEventsError, match="positive sum"):
        UnfoldedResult(ev, ("x",), ("",), w, weights_systematics={"down": -torch.ones(10)})
    with pytest.raises(InvalidEventsError, match="NaN"):
        UnfoldedResult(ev, ("x",), ("",), torch.tensor([float("nan")] + [1.0] * 9))
    with pytest.raises(InvalidEventsError, match="rows"):
        UnfoldedResult(torch.tensor([[float("nan")]] + [[0.0]] * 9), ("x",), ("",), w)
    with pytest.raises(ConfigError, match="replicas >= 1"):
        UnfoldedResult(ev, ("x",), ("",), w, weights_ensemble=torch.ones(0, 10))
    with pytest.raises(ConfigError, match="reserved"):
        UnfoldedResult(ev, ("x",), ("",), w, weights_systematics={"bootstrap_mc_0": w})
    with pytest.raises(ShapeMismatchError, match="names"):
        UnfoldedResult(ev, ("x", "y"), ("", ""), w)
    with pytest.raises(ConfigError, match="unknown observables"):
        UnfoldedResult(ev, ("x",), ("",), w).histogram("y")
    with pytest.raises(ConfigError, match="numbered"):
        UnfoldedResult.from_columns(ev, ["x"], [""], {"weights_nominal": w, "weights_ensemble_1": w})
    # a published file whose weight columns do not match its events
    spec = {"format": "unfolded_events", "format_version": 1, "observables": ["x"], "units": [""], "events": 10, "iterations": 1,
            "settings": {}, "ensemble": 0, "bootstrap_mc": 0, "bootstrap_data": 1, "systematics": []}
    short = save_results(tmp_path / "short.h5", {"events": ev, "weights_nominal": w, "weights_bootstrap_data_0": torch.ones(9)}, spec,
                         kind="unfolded_events")
    with pytest.raises(PublishError, match="weights_bootstrap_data_0"):
        UnfoldedResult.load(short)
    missing = save_results(tmp_path / "missing.h5", {"events": ev, "weights_nominal": w}, spec, kind="unfolded_events")
    with pytest.raises(PublishError, match="missing"):
        UnfoldedResult.load(missing)


def test_reads_a_pandas_frame_of_the_atlas_layout(tmp_path):
    pd = pytest.importorskip("pandas", reason="pandas is optional (only to write the reference frame)")
    pytest.importorskip("tables", reason="PyTables is optional (pandas needs it to write HDF5)")
    res = _result()
    frame = pd.DataFrame({"pt": res.events[:, 0].numpy(), "eta": res.events[:, 1].float().numpy(),
                          **{k: v.numpy() for k, v in res.columns().items()}})
    frame.to_hdf(tmp_path / "atlas.h5", key="df", mode="w")
    back = read_pandas_table(tmp_path / "atlas.h5", units={"pt": "GeV"}, iterations=5)
    assert back.observables == ("pt", "eta") and back.units == ("GeV", "") and back.replicas("bootstrap_data") == 5
    assert list(back.weights_systematics) == ["jes_up", "pileup"]
    torch.testing.assert_close(back.weights_nominal, res.weights_nominal, rtol=0, atol=0)
    torch.testing.assert_close(back.events[:, 1], res.events[:, 1].float().double(), rtol=0, atol=0)
    frame.to_hdf(tmp_path / "table.h5", key="df", mode="w", format="table")
    with pytest.raises(PublishError, match="pickled"):
        read_pandas_table(tmp_path / "table.h5")
    with pytest.raises(PublishError, match="no pandas frame"):
        read_pandas_table(tmp_path / "atlas.h5", key="other")
