"""Resonance on a background with the detector resolution as a constrained nuisance parameter.

The toy (ResonanceBackground) is checked against quadrature and finite differences; the
measurement pipeline's exact-likelihood intervals are checked against their asymptotic
(Fisher-information) expectations, including the widening by the Gaussian-constrained nuisance.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from sbilab.analysis import load_config, run_analysis
from sbilab.exceptions import ConfigError
from sbilab.simulators import augment
from sbilab.simulators.toys.resonance import Resonance, _gauss_legendre
from sbilab.simulators.toys.resonance_bkg import ResonanceBackground

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[analysis]
name = "bkg"
[simulator]
toy = "resonance_background"
background_fraction = 0.3
[truth]
M = 100.0
Gamma = 5.0
sigma_det = 2.0
[nuisances]
sigma_det = { mean = 2.0, sigma = 0.2 }
[observed]
n_events = 2000
seed = 5
[estimator]
method = "alices"
n_simulations = 30000
hidden = [64, 64]
[training]
epochs = 6
batch_size = 512
learning_rate = 2e-3
patience = 8
seed = 3
[fit]
scan_points = 3
"""


def test_toy_density_acceptance_and_scores():
    sim = ResonanceBackground(background_fraction=0.25, slope=15.0)
    th = torch.tensor([[101.0, 4.0, 1.8]], dtype=torch.float64)
    nodes, weights = _gauss_legendre(85.0, 115.0, 0.5)
    assert float((sim.log_prob(nodes.unsqueeze(1), th).exp() * weights).sum()) == pytest.approx(1.0, abs=1e-10)
    # without background and at the Resonance toy's sigma, both toys agree exactly
    pure, res = ResonanceBackground(background_fraction=0.0), Resonance(sigma_det=2.0)
    x = torch.linspace(86, 114, 7, dtype=torch.float64).unsqueeze(1)
    assert torch.allclose(pure.log_prob(x, torch.tensor([99.0, 6.0, 2.0])), res.log_prob(x, torch.tensor([99.0, 6.0])), atol=1e-12)
    # closed-form acceptance gradient (incl. the heat-equation sigma derivative) vs finite differences
    point = th.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(sim.acceptance(point).sum(), point)
    for i in range(3):
        step = torch.zeros(1, 3, dtype=torch.float64)
        step[0, i] = 1e-5
        fd = (sim.acceptance(th + step) - sim.acceptance(th - step)) / 2e-5
        assert float(grad[0, i]) == pytest.approx(float(fd), rel=1e-6, abs=1e-10)
    # the joint score averages to zero at the generating point; background events carry none
    ev = augment(sim, sim.simulate(40000, theta=th[0], generator=torch.Generator().manual_seed(1)))
    assert ev.score_joint.mean(0).abs().max() < 5 * ev.score_joint.std(0).max() / math.sqrt(40000)
    background = ev.latent[:, 1] < 0.5
    assert abs(float(background.double().mean()) - 0.25) < 0.01
    assert float(ev.score_joint[background].abs().max()) == 0.0
    # Fisher information is symmetric positive definite with the strong Gamma-sigma correlation
    info = sim.fisher_information(th[0])
    assert torch.allclose(info, info.T) and bool((torch.linalg.eigvalsh(info) > 0).all())
    assert info[1, 2] / (info[1, 1] * info[2, 2]).sqrt() > 0.7


def test_process_densities_labels_and_resolution_shift():
    from sbilab.exceptions import OutOfSupportError

    sim = ResonanceBackground(background_fraction=0.3, slope=20.0)
    theta = torch.tensor([100.0, 5.0, 2.0], dtype=torch.float64)
    nodes, weights = _gauss_legendre(85.0, 115.0, 0.5)
    x = nodes.unsqueeze(1)
    log_s, log_b = sim.signal_log_prob(x, theta), sim.background_log_prob(x)
    # each process density is normalised in the window, and the toy's density is their mixture
    assert float((log_s.exp() * weights).sum()) == pytest.approx(1.0, abs=1e-10)
    assert float((log_b.exp() * weights).sum()) == pytest.approx(1.0, abs=1e-12)
    mixture = torch.log(0.7 * log_s.exp() + 0.3 * log_b.exp())
    torch.testing.assert_close(sim.log_prob(x, theta), mixture, rtol=0, atol=1e-12)
    # the signal density is the pure-signal toy's density, at any background fraction
    torch.testing.assert_close(log_s, ResonanceBackground(background_fraction=0.0).log_prob(x, theta), rtol=0, atol=0)
    ev = sim.simulate(4000, theta=theta, generator=torch.Generator().manual_seed(3))
    label = sim.is_signal(ev)
    assert label.dtype == torch.bool and abs(float((~label).double().mean()) - 0.3) < 0.03
    assert torch.equal(label, ev.latent[:, 1] > 0.5)
    assert sim.with_resolution(theta, 1.1).tolist() == pytest.approx([100.0, 5.0, 2.2], rel=1e-15)
    with pytest.raises(OutOfSupportError, match="sigma_det = 3.000"):
        sim.with_resolution(theta, 1.5)


def test_nuisance_widens_width_interval_as_expected(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "analysis.toml").write_text(CONFIG)
    summary = run_analysis(load_config(folder), out=tmp_path / "out", progress=False)
    assert "widening" in summary
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    m, gamma, sigma = (doc["parameters"][k] for k in ("M", "Gamma", "sigma_det"))
    for r in (m, gamma):  # exact intervals match the asymptotic Fisher expectation
        assert (r["exact_hi"] - r["exact_lo"]) / 2 == pytest.approx(r["fisher_half_width"], rel=0.12)
        f = r["fixed_nuisances"]
        assert (f["exact_hi"] - f["exact_lo"]) / 2 == pytest.approx(f["fisher_half_width"], rel=0.12)
    # the constrained nuisance widens Gamma's interval (Fisher: x1.29) and leaves M's alone
    assert gamma["fisher_widening"] == pytest.approx(1.287, abs=0.01)
    assert gamma["exact_widening"] == pytest.approx(gamma["fisher_widening"], rel=0.06)
    assert m["exact_widening"] == pytest.approx(1.0, abs=0.02)
    # the nuisance's own interval is at most its constraint's width
    assert (sigma["exact_hi"] - sigma["exact_lo"]) / 2 < 0.2
    # learned ratio (a tiny smoke training): finite intervals around a sensible best fit
    for r in (m, gamma):
        assert r["lo"] < r["best"] < r["hi"] and math.isfinite(r["width_ratio"])
    assert abs(m["best"] - m["exact_best"]) < 1.0
    assert doc["fit_valid"]["exact"]


def test_shipped_background_config_and_errors(tmp_path):
    cfg = load_config(ROOT / "analyses" / "resonance_background")
    assert cfg.kind == "measurement" and cfg.nuisances == {"sigma_det": (2.0, 0.2)}
    assert cfg.quick_version().fit.scan_points < cfg.fit.scan_points
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "analysis.toml").write_text(CONFIG.replace("{ mean = 2.0, sigma = 0.2 }", "{ mean = 2.0, sigma = -1 }"))
    with pytest.raises(ConfigError, match=r"\[nuisances\] sigma_det needs .* positive"):
        load_config(folder)
    (folder / "analysis.toml").write_text(CONFIG.replace('name = "bkg"', 'name = "bkg"\nkind = "unfold"'))
    with pytest.raises(ConfigError, match=r"kind = 'unfold'"):
        load_config(folder)
