"""The search pipeline: a binned resonance search with pyhf on raw x, a learned classifier and the exact s/b.

Checked against exact answers: the exported workspaces re-loaded with plain pyhf give the same
observed CLs; template yields equal S, B and S·A(σ')/A(σ) exactly; every observed event lands in
a bin; profiling systematics never raises the Asimov significance above the statistics-only one
of the same templates (a theorem); no binning beats the unbinned exact-density significance (the
log-sum inequality, up to the MC noise of the templates).
"""

import json
import math
from pathlib import Path

import numpy as np
import pyhf
import pytest
import torch

from sbilab.analysis import load_config, run_analysis
from sbilab.estimators import Classifier
from sbilab.exceptions import ConfigError
from sbilab.publish import load
from sbilab.stats.asymptotic import asimov_significance

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (ROOT / "analyses" / "resonance_search" / "analysis.toml").read_text()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    summary = run_analysis(load_config(ROOT / "analyses" / "resonance_search"), out=out, quick=True, progress=False)
    return out, json.loads((out / "results.json").read_text()), summary


def _workspace(out: Path, key: str) -> pyhf.Workspace:
    return pyhf.Workspace(json.loads((out / f"workspace_{key}.json").read_text()))


def test_outputs_and_pyhf_reinterpretation(quick):
    out, doc, summary = quick
    assert set(doc["observables"]) == {"x", "learned", "exact"} and "exact" in summary
    assert (out / "limits.png").is_file()
    classifier = load(out / "estimator.h5")  # the published classifier: signal-like at the peak, background-like at the edge
    assert isinstance(classifier, Classifier)
    with torch.no_grad():
        logit = classifier.logit(torch.tensor([[100.0], [86.0]]))
    assert logit[0] > 0 > logit[1]
    pyhf.set_backend("numpy")
    for key, r in doc["observables"].items():
        ws = _workspace(out, key)
        model = ws.model()
        cls = float(pyhf.infer.hypotest(1.0, ws.data(model), model, test_stat="qtilde"))
        assert cls == pytest.approx(r["cls_mu1"], abs=1e-3), key
        assert r["valid"], key
        e = r["expected_limits"]
        assert e["-2"] < e["-1"] < e["median"] < e["+1"] < e["+2"]


def test_templates_and_observed_counts_are_exact(quick):
    from sbilab.simulators.toys.resonance_bkg import ResonanceBackground

    out, doc, _ = quick
    cfg = load_config(ROOT / "analyses" / "resonance_search").quick_version()
    sim = ResonanceBackground(cfg.toy_options["background_fraction"], cfg.toy_options["slope"])
    acc = {s: float(sim.acceptance(torch.tensor([[100.0, 5.0, s]], dtype=torch.float64))) for s in (1.8, 2.0, 2.2)}
    for key in doc["observables"]:
        ws = _workspace(out, key)
        samples = {s["name"]: s for s in ws["channels"][0]["samples"]}
        assert sum(samples["signal"]["data"]) == pytest.approx(doc["signal_events"], rel=1e-12)
        assert sum(samples["background"]["data"]) == pytest.approx(doc["background_events"], rel=1e-12)
        (histosys,) = [m for m in samples["signal"]["modifiers"] if m["type"] == "histosys"]
        assert sum(histosys["data"]["lo_data"]) == pytest.approx(doc["signal_events"] * acc[1.8] / acc[2.0], rel=1e-9)
        assert sum(histosys["data"]["hi_data"]) == pytest.approx(doc["signal_events"] * acc[2.2] / acc[2.0], rel=1e-9)
        assert sum(ws["observations"][0]["data"]) == doc["n_observed"]  # every observed event lands in a bin
        if key != "x":  # equal expected background per bin (quantiles of the background templates)
            assert np.allclose(samples["background"]["data"], doc["background_events"] / len(samples["background"]["data"]), rtol=1e-3)


def test_significance_bounds(quick):
    _, doc, _ = quick
    from scipy.integrate import quad

    from sbilab.simulators.toys.resonance_bkg import ResonanceBackground

    bound = doc["unbinned_exact"]["expected_significance"]
    # Z_A^2 = 2 int [(B b + S s) ln(1 + S s / B b) - S s] dx with the signal Voigt of the toy and the truncated exponential
    signal = ResonanceBackground(0.0)
    theta = torch.tensor([[100.0, 5.0, 2.0]], dtype=torch.float64)
    s, b = doc["signal_events"], doc["background_events"]

    def integrand(x: float) -> float:
        ps = float(signal.log_prob(torch.tensor([[x]], dtype=torch.float64), theta).exp())
        pb = math.exp(-x / 20.0) / (20.0 * (math.exp(-85.0 / 20.0) - math.exp(-115.0 / 20.0)))
        return (b * pb + s * ps) * math.log1p(s * ps / (b * pb)) - s * ps

    assert bound == pytest.approx(math.sqrt(2 * quad(integrand, 85.0, 115.0, points=[100.0], limit=200)[0]), rel=1e-4)
    for key, r in doc["observables"].items():
        t = r["templates"]
        stat = math.sqrt(sum(asimov_significance(s, b) ** 2 for s, b in zip(t["signal"], t["background"]) if s > 0))
        assert r["stat_only_significance"] == pytest.approx(stat, rel=1e-12)
        # profiling nuisance parameters can only lower the Asimov q0 of the same templates (theorem)
        assert r["expected_significance"] <= r["stat_only_significance"] + 1e-3, key
        # log-sum inequality: no binning beats the unbinned exact densities (0.5%: MC noise of 40k template events)
        assert r["stat_only_significance"] <= 1.005 * bound, key
    # the exact s/b in 10 equal-background bins keeps >= 97% of the unbinned significance (measured: 99%)
    assert doc["observables"]["exact"]["stat_only_significance"] >= 0.97 * bound


def test_exact_and_learned_observables_against_raw_x(quick):
    _, doc, _ = quick
    limit = {k: r["expected_limits"]["median"] for k, r in doc["observables"].items()}
    # Not a theorem for finite bins (a fine x histogram is as good as s/b in one dimension); with the
    # same number of bins the s/b bins win. Deterministic given the seeds; measured 0.810 vs 0.820.
    assert limit["exact"] <= limit["x"]
    # the quick classifier (20k events, 30 epochs) reaches the exact observable: measured 0.811 vs 0.810
    assert limit["learned"] == pytest.approx(limit["exact"], rel=0.03)
    assert doc["unbinned_exact"]["expected_limit"] < limit["exact"]  # statistics only, unbinned: lower


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("mu_true = 1.0", "mu_true = -1.0", r"\[search\] mu_true = -1.0 must be >= 0"),
        ("background_events = 1000.0", "background_events = 0.0", r"\[search\] background_events = 0.0 must be positive"),
        ("x_bins = 10", 'x_bins = "ten"', r"\[search\] x_bins = 'ten' has the wrong type"),
        ("limit_cl = 0.95", "limit_cl = 1.5", r"\[search\] limit_cl = 1.5 must lie in \(0, 1\)"),
        ("mu_points = 50", "mu_points = 50\nbins = 4", r"unknown key\(s\) \['bins'\] in \[search\]"),
        ("mu_points = 12", "mu_points = 12\nmu_true = -0.5", r"\[quick\] mu_true = -0.5 must be >= 0"),
        ('method = "carl"', 'method = "alices"', r"set \[estimator\] method = 'carl'"),
        ('toy = "resonance_background"', 'toy = "resonance"', r"kind = 'search' needs \[simulator\] toy = 'resonance_background'"),
    ],
)
def test_config_errors_name_the_key(tmp_path, old, new, message):
    assert old in SHIPPED
    (tmp_path / "analysis.toml").write_text(SHIPPED.replace(old, new))
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path)


def test_quick_overrides_and_run_time_errors(tmp_path):
    (tmp_path / "analysis.toml").write_text(SHIPPED)
    cfg = load_config(tmp_path)
    assert cfg.kind == "search" and cfg.search.mc_events == 500_000 and cfg.quick_version().search.mc_events == 40_000
    assert cfg.quick_version().search.mu_true == cfg.search.mu_true == 1.0
    (tmp_path / "analysis.toml").write_text(SHIPPED.replace("background_fraction = 0.5", "background_fraction = 0.0"))
    with pytest.raises(ConfigError, match=r"\[simulator\] background_fraction = 0.0"):
        run_analysis(load_config(tmp_path), out=tmp_path / "out", quick=True, progress=False)
    (tmp_path / "analysis.toml").write_text(SHIPPED.replace("resolution_uncertainty = 0.1", "resolution_uncertainty = 0.5"))
    with pytest.raises(ConfigError, match=r"\[search\] resolution_uncertainty = 0.5 moves sigma_det"):
        run_analysis(load_config(tmp_path), out=tmp_path / "out", quick=True, progress=False)
