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
from sbilab.analysis.intervals import fisher_widths
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
[training]
method = "alices"
n_simulations = 30000
epochs = 6
batch_size = 512
hidden = [64, 64]
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


def test_fisher_widths_closed_form():
    # x ~ N(mu + eta, 1) with eta ~ N(0, s): profiled width sqrt(1/n + s^2), fixed 1/sqrt(n)
    n, s = 100, 0.2
    w = fisher_widths(torch.ones(2, 2, dtype=torch.float64), n, ["mu", "eta"], {"eta": (0.0, s)})
    assert w["mu"]["profiled"] == pytest.approx(math.sqrt(1 / n + s**2), rel=1e-12)
    assert w["mu"]["fixed"] == pytest.approx(1 / math.sqrt(n), rel=1e-12)


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
