"""The qcd_splittings pipeline and its inference helpers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sbilab.analysis import load_config, run_analysis
from sbilab.analysis.splittings_inference import SetLogRatio, hessian_widths
from sbilab.exceptions import ConfigError
from sbilab.simulators.shower import PrimaryEmissions

CONFIG = """
[analysis]
name = "splittings"
kind = "qcd_splittings"
[simulator]
toy = "shower"
t0 = 1.0
[truth]
D = 1.0
F = 1.0
C = 0.0
[observed]
n_events = 1000
seed = 3
[estimator]
method = "alices"
n_simulations = 2000
hidden = [16, 16]
[training]
epochs = 1
seed = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "analysis"
    folder.mkdir(exist_ok=True)
    (folder / "analysis.toml").write_text(text)
    return folder


def test_pipeline_runs_and_reports(tmp_path):
    summary = run_analysis(load_config(write(tmp_path, CONFIG)), out=tmp_path / "out", progress=False)
    assert "no hadronisation" in summary
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(doc["shower"]["methods"]) == {"carl", "alices"} and doc["hadronisation"] is False
    toy = PrimaryEmissions()
    cr = torch.sqrt(torch.diag(torch.linalg.inv(1000 * toy.fisher_information(torch.tensor([1.0, 1.0, 0.0])))))
    assert doc["toy"]["cramer_rao"]["D"] == pytest.approx(cr[0].item(), rel=1e-9)
    assert all(math.isfinite(v) for v in doc["shower"]["joint_fisher_widths"].values())
    assert (tmp_path / "out" / "estimator.h5").is_file()


def test_config_pairs_kind_and_toy(tmp_path):
    with pytest.raises(ConfigError, match="qcd_splittings.*shower"):
        load_config(write(tmp_path, CONFIG.replace('toy = "shower"', 'toy = "gaussian"')))
    with pytest.raises(ConfigError, match="ratio estimators"):
        run_analysis(load_config(write(tmp_path, CONFIG.replace('"alices"', '"nde"'))), out=tmp_path / "o", progress=False)


def test_hessian_widths_of_the_exact_toy_match_cramer_rao():
    toy = PrimaryEmissions()
    truth = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    ev = toy.simulate(40000, theta=truth.float(), generator=torch.Generator().manual_seed(0))
    ref = toy.space.reference
    widths = hessian_widths(lambda x, th: toy.log_prob(x, th) - toy.log_prob(x, ref.to(th)), ev.x, truth, chunk=15000)
    cr = torch.sqrt(torch.diag(torch.linalg.inv(40000 * toy.fisher_information(truth))))
    torch.testing.assert_close(widths[:2], cr[:2], rtol=0.05, atol=0)  # D, F: observed vs expected information
    assert widths[2].item() == pytest.approx(cr[2].item(), rel=0.3)  # C: few events carry its information


def test_set_log_ratio_reads_the_mask_off_zero_padding():
    class Probe(torch.nn.Module):
        def forward(self, x, theta, mask=None):
            return mask.sum(1).to(x.dtype)

    x = torch.tensor([[[1.0, 0.5], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    assert SetLogRatio(Probe())(x, torch.zeros(2, 3)).tolist() == [1.0, 0.0]


def test_gold_ratio_on_particle_sets_plugs_into_the_unbinned_fit():
    from sbilab.analysis.splittings_inference import TrainOptions, fit_parameters, train_splitting_ratio
    from sbilab.simulators.shower import PartonShower

    shower = PartonShower(output="particles")
    options = TrainOptions(hidden=(16,), epochs=1, embedding={"kind": "deepsets", "out_features": 8, "hidden": [16], "latent": 8})
    est = train_splitting_ratio(shower, "alices", 150, options)
    assert est.is_set
    observed = shower.simulate(100, theta=torch.tensor([1.0, 1.0, 0.0]), generator=torch.Generator().manual_seed(1))
    result = fit_parameters(est, observed, shower.space)
    assert set(result.best) == {"D", "F", "C"} and all(math.isfinite(v) for v in result.best.values())
