"""The unfolding pipeline: a tiny run end to end, its published result, and its configuration checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sbilab.analysis import load_config, run_analysis
from sbilab.exceptions import ConfigError
from sbilab.unfolding import UnfoldedResult
from _analysis_folder import write  # noqa: E402

CONFIG = """
[analysis]
name = "unfolding"
kind = "unfolding"
[simulator]
toy = "unfolding_gaussian"
sim_mean = 0.0
sim_std = 1.0
efficiency = 0.9
efficiency_slope = 0.08
fake_fraction = 0.1
background_fraction = 0.1
[truth]
data_mean = 0.2
data_std = 0.8
[observed]
n_events = 1000
seed = 3
[estimator]
method = "carl"
n_simulations = 1000
hidden = [16, 16]
[training]
epochs = 2
validation_fraction = 0.0
patience = false
seed = 2
[unfolding]
iterations = 2
ensemble_members = 2
bootstrap_data = 2
bootstrap_mc = false
background_events = 1000
generative = false
bins = 10
"""


def test_pipeline_runs_publishes_and_plots(tmp_path):
    out = tmp_path / "out"
    summary = run_analysis(load_config(write(tmp_path, CONFIG)), out=out, progress=False)
    assert "OmniFold" in summary and "chi2/ndf" in summary
    doc = json.loads((out / "results.json").read_text())
    assert doc["replicas"] == {"ensemble": 2, "bootstrap_data": 2, "bootstrap_mc": 0, "systematics": ["smearing_up"]}
    assert len(doc["moments"]["omnifold"]) == 2 == len(doc["moments"]["ideal"])
    assert doc["moments"]["ideal"][0] == pytest.approx([0.1505799, 0.8856316], abs=1e-6)  # the full toy's ideal k = 1
    assert [d["step"] for d in doc["diagnostics"]] == ["1", "1b", "2"] * 2
    assert len(doc["histogram"]["edges"]) == 11 and doc["histogram"]["generative"] is None
    # 2 + 2 replicas and a systematic cannot span a covariance of 10 bins: the chi2 says so
    chi2 = doc["chi2_omnifold_vs_truth"]
    assert chi2["bins"] == 10 and chi2["covariance_rank"] <= 3 and chi2["complete_covariance"] is False
    assert "rank" in summary and "biased high" in summary
    result = UnfoldedResult.load(out / "unfolded.h5")
    assert result.replicas("ensemble") == 2 and result.replicas("bootstrap_data") == 2 and "smearing_up" in result.weights_systematics
    assert result.settings["method"] == "omnifold"
    assert (out / "results.h5").is_file()
    pytest.importorskip("matplotlib")
    assert all((out / name).is_file() for name in ("unfolded.png", "iterations.png", "diagnostics.png"))


def test_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="unknown keys"):
        load_config(write(tmp_path, CONFIG.replace("data_std = 0.8", "data_std = 0.8\nmu = 1.0")))
    with pytest.raises(ConfigError, match="needs \\[simulator\\] toy = 'unfolding_gaussian'"):
        load_config(write(tmp_path, CONFIG.replace('toy = "unfolding_gaussian"', 'toy = "gaussian"')))
    with pytest.raises(ConfigError, match="bins"):
        load_config(write(tmp_path, CONFIG.replace("bins = 10", "bins = 1")))
    with pytest.raises(ConfigError, match="bootstrap_data"):
        load_config(write(tmp_path, CONFIG.replace("bootstrap_data = 2", "bootstrap_data = 0")))
    config = load_config(Path(__file__).resolve().parents[1] / "analyses" / "unfolding_gaussian")
    assert config.kind == "unfolding" and config.unfolding.iterations == 4 and config.quick_version().unfolding.iterations == 2
