"""The anomaly analysis runs end to end from its folder's configuration; its configuration errors are named."""

import json
import math
from pathlib import Path

import pytest

from sbilab.analysis import load_config, run_analysis
from sbilab.anomaly import bivariate_normal_abcd
from sbilab.publish import load_results
from sbilab.exceptions import ConfigError, RegionError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = (ROOT / "analyses" / "anomaly_search" / "analysis.toml").read_text()

TINY = """
[quick]
epochs = 3
hidden = [16]
lambdas = [0.0, 10.0]
abcd_lambda = 10.0
decorrelation_events = 1500
decorrelation_test_events = 6000
signal_fractions = [0.02]
data_events = 40000
sic_test_events = 5000
sic_efficiency = 0.01
selection_efficiency = 0.05
abcd_scan_points = 9
flow_epochs = 3
"""


def _config(tmp_path, text):
    (tmp_path / "analysis.toml").write_text(text)
    return load_config(tmp_path)


def test_tiny_run_writes_every_result_and_figure(tmp_path):
    cfg = _config(tmp_path, SHIPPED[: SHIPPED.index("[quick]")] + TINY)
    summary = run_analysis(cfg, out=tmp_path / "out", quick=True, device="cpu", progress=False)
    assert "bump hunt (cwola)" in summary
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    scan = doc["decorrelation"]
    assert [p["lam"] for p in scan["points"]] == [0.0, 10.0]
    exact = bivariate_normal_abcd(0.7 / math.sqrt(2), 0.8416212335729143, 1.0).closure  # rho' = rho mu_1/|mu|, cut at 20 %
    assert scan["exact_closure"] == pytest.approx(exact, rel=1e-9)
    for lam in ("0.0", "10.0"):
        abcd = doc["abcd"][lam]
        assert abcd["limit"]["observed"] == pytest.approx(abcd["limit_iminuit"]["observed"], rel=5e-3)
        assert sum(abcd["signal"]) == pytest.approx(40.0, rel=1e-9)  # all signal, contamination of B, C, D included
    assert set(doc["sic"]["fraction_of_optimal"]) == {"supervised", "idealised", "cwola", "cathode"}
    hunt = doc["bump_hunt"]
    assert hunt["observed"] == hunt["true_background"] + hunt["true_signal"]
    assert json.loads((tmp_path / "out" / "abcd_workspace.json").read_text())["channels"][0]["name"] == "A"
    curves = load_results(tmp_path / "out" / "sic_curves.h5", expected_kind="sic_curves")
    assert "cwola_0.02.sic" in curves.arrays and curves.spec["background_efficiency"] == 0.01
    pytest.importorskip("matplotlib")
    for name in ("sculpting", "closure", "cls", "sic", "bump"):
        assert (tmp_path / "out" / f"{name}.png").stat().st_size > 1000


@pytest.mark.parametrize("change, message", [
    (("lambdas = [0.0, 1.0, 3.0, 10.0, 30.0]", "lambdas = [0.0, -1.0]"), r"lambdas = \(0.0, -1.0\) must be >= 0"),
    (("abcd_lambda = 30.0", "abcd_lambda = 5.0"), "abcd_lambda = 5.0 is not among lambdas"),
    (('toy = "anomaly"', 'toy = "gaussian"'), "kind = 'anomaly' needs \\[simulator\\] toy = 'anomaly'"),
    (('search_method = "cwola"', 'search_method = "bumps"'), "choose 'cwola', 'cathode' or 'idealised'"),
    (('sic_methods = ["supervised", "idealised", "cwola", "cathode"]', 'sic_methods = ["cwola", "flows"]'),
     r"sic_methods = \['cwola', 'flows'\]: choose a non-empty list among"),
    (("flow_epochs = 40", "flow_epochs = 0"), "flow_epochs = 0 must be positive"),
    (("selection_efficiency = 0.01", "selection_efficiency = 1.5"), r"selection_efficiency = 1.5 must lie in \(0, 1\)"),
])
def test_configuration_errors_are_named(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, SHIPPED.replace(*change))


def test_bad_toy_options_and_truth_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="do not fit the 'anomaly' toy"):  # refused at load (issue 11)
        _config(tmp_path, SHIPPED.replace("noise_features = 4", "noise_feature = 4"))
    cfg = _config(tmp_path, SHIPPED.replace("signal_fraction = 0.01", "mu = 1.0"))
    with pytest.raises(ConfigError, match="signal_fraction"):
        run_analysis(cfg, out=tmp_path / "out", quick=True, progress=False)
    cfg = _config(tmp_path, SHIPPED.replace("window = [2.8, 3.2, 0.4]", "window = [4.5, 4.9, 0.4]"))
    with pytest.raises(RegionError, match=r"window \[4.1, 5.3\] .* lies outside the mass range"):
        run_analysis(cfg, out=tmp_path / "out", quick=True, progress=False)
