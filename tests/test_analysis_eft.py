"""EFT limits on the morphing toy: learned ratio vs pT histogram vs SALLINO, expected and observed.

Checked against exact answers: the Asimov exact-likelihood intervals against the extended
Fisher information, the information ordering (no binned likelihood beats the exact unbinned
one), morphed templates against the closed-form cross sections, and the binned likelihood
against a hand-written Poisson likelihood.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from sbilab.analysis import load_config, run_analysis
from sbilab.simulators.toys import Morphing

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[analysis]
name = "eft"
kind = "eft_limits"
[simulator]
toy = "morphing"
n_couplings = 1
low = -0.5
high = 0.5
[truth]
theta_1 = 0.1
[observed]
seed = 11
[eft]
luminosity = 400.0
histogram_bins = 6
histogram_max = 150.0
score_bins = 6
template_events = 40000
asimov_events = 4000
score_simulations = 6000
cls = [0.683, 0.95]
[estimator]
method = "alices"
n_simulations = 12000
hidden = [32, 32]
[training]
epochs = 5
batch_size = 512
learning_rate = 2e-3
patience = 8
seed = 4
[fit]
scan_points = 9
"""


def extended_fisher(sim: Morphing, theta: torch.Tensor, luminosity: float, n: int = 200_000) -> float:
    """L σ(θ) E_θ[(∂ log dσ(x|θ))²] for one coupling, by Monte Carlo at θ."""
    x = sim.simulate(n, theta=theta, generator=torch.Generator().manual_seed(0)).x.double()
    th = theta.double().reshape(1, 1).expand(n, 1).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.log(sim.differential_cross_section(x, th)).sum(), th)
    return float(luminosity * sim.cross_section(theta.double().reshape(1, 1))[0] * (g[:, 0] ** 2).mean())


def test_eft_limits_against_fisher_and_information_ordering(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "analysis.toml").write_text(CONFIG)
    summary = run_analysis(load_config(folder), out=tmp_path / "out", progress=False)
    assert "sallino_learned" in summary and "histogram" in summary
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    sim = Morphing(1, low=-0.5, high=0.5)
    assert doc["expected_events"] == pytest.approx(400 * float(sim.cross_section(torch.tensor([[0.1]]))[0]), rel=1e-6)

    def width(method: str, data: str, cl: str = "0.683") -> float:
        iv = doc["methods"][method][data]["parameters"]["theta_1"]["intervals"][cl]
        assert not (iv["lo_at_bound"] or iv["hi_at_bound"])
        return iv["hi"] - iv["lo"]

    # Asimov: the exact unbinned fit sits at the truth with the Fisher width (small quadratic terms)
    exact = doc["methods"]["unbinned_exact"]["expected"]["parameters"]["theta_1"]
    sigma = 1 / math.sqrt(extended_fisher(sim, torch.tensor([0.1]), 400.0))
    mc = math.sqrt(doc["expected_events"] / 4000)  # relative MC noise of the 4000-event weighted Asimov sample
    assert exact["best"] == pytest.approx(0.1, abs=3 * mc * sigma)
    assert width("unbinned_exact", "expected") / 2 == pytest.approx(sigma, rel=0.1)
    assert width("unbinned_exact", "expected", "0.95") / 2 == pytest.approx(1.96 * sigma, rel=0.15)
    # no binned likelihood beats the exact unbinned one (Asimov, up to template MC noise)
    for method in ("histogram", "sallino_exact", "sallino_learned"):
        assert width(method, "expected") >= 0.98 * width("unbinned_exact", "expected")
    # the exact score at the SM is the optimal observable at linear order: SALLINO nearly unbinned-optimal
    assert width("sallino_exact", "expected") < 1.25 * width("unbinned_exact", "expected")
    # learned methods (tiny smoke training) stay within a generous factor of their exact counterparts
    assert width("unbinned_learned", "expected") == pytest.approx(width("unbinned_exact", "expected"), rel=0.4)
    assert width("sallino_learned", "expected") == pytest.approx(width("sallino_exact", "expected"), rel=0.3)
    # observed intervals exist for every method and the exact one covers a sensible region
    obs = doc["methods"]["unbinned_exact"]["observed"]["parameters"]["theta_1"]
    assert obs["intervals"]["0.683"]["lo"] < obs["best"] < obs["intervals"]["0.683"]["hi"]
    assert abs(obs["best"] - 0.1) < 4 * sigma
    assert set(doc["parameters"]["theta_1"]) >= {"best", "lo", "hi", "exact_best", "exact_lo", "exact_hi"}


def test_shipped_eft_config():
    cfg = load_config(ROOT / "analyses" / "eft_morphing")
    assert cfg.kind == "eft_limits" and cfg.eft.cls == (0.683, 0.95)
    quick = cfg.quick_version()
    assert quick.eft.template_events < cfg.eft.template_events and quick.estimator.n_simulations < cfg.estimator.n_simulations
