"""The mem_resonance pipeline: every method fitted on the same datasets, results strict JSON and published."""

from __future__ import annotations

import json

import pytest
import torch

from sbilab.analysis import load_config, run_analysis
from sbilab.exceptions import ConfigError
from sbilab.publish import load_results
from sbilab.simulators.toys import Resonance
from _analysis_folder import write  # noqa: E402

CONFIG = """
[analysis]
name = "mem"
kind = "mem_resonance"
[simulator]
toy = "resonance"
[truth]
M = 100.0
Gamma = 5.0
[observed]
n_events = 200
seed = 3
[estimator]
method = "alices"
n_simulations = 2000
hidden = [16, 16]
[training]
epochs = 1
seed = 2
[mem]
toys = 2
samples = 256
learned_samples = 32
pairs = 2000
proposal_events = 1000
flow_transforms = 1
flow_hidden = 8
learned_epochs = 1
coverage_events = 4
noise_seeds = 2
"""


def test_pipeline_runs_and_reports(tmp_path):
    summary = run_analysis(load_config(write(tmp_path, CONFIG)), out=tmp_path / "out", progress=False)
    assert "ml_mem" in summary and "alices" in summary
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(doc["methods"]) == {"exact", "mem", "ml_mem", "alices"}
    cr = torch.sqrt(torch.diag(torch.linalg.inv(200 * Resonance().fisher_information(torch.tensor([100.0, 5.0])))))
    assert doc["cramer_rao"]["M"] == pytest.approx(cr[0].item(), rel=1e-9)
    exact, mem = doc["methods"]["exact"], doc["methods"]["mem"]
    for name in ("M", "Gamma"):  # the analytic MEM is the exact likelihood to 1e-3 per event
        assert mem[name]["mean_best"] == pytest.approx(exact[name]["mean_best"], abs=0.05 * exact[name]["width"])
        assert mem[name]["width"] == pytest.approx(exact[name]["width"], rel=0.02)
    assert doc["methods"]["mem"]["rms_log_ratio_vs_exact"] < 5e-3  # 256 QMC samples per event
    assert doc["ml_mem_coverage"]["rows"] == [0, 1, 2, 3]
    assert load_results(tmp_path / "out" / "results.h5").spec["analysis"] == "mem"


def test_section_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="defensive"):
        load_config(write(tmp_path, CONFIG.replace("noise_seeds = 2", "noise_seeds = 2\ndefensive = 1.5")))
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(write(tmp_path, CONFIG.replace("toys = 2", "toys = 2\nbogus = 1")))
