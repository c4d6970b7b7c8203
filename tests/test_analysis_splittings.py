"""The qcd_splittings pipeline: its parts against exact answers, and that a biased learned likelihood fails loudly."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sbilab.analysis import load_config, run_analysis
from sbilab.analysis.splittings import SplittingsSection, normalised, train_splitting_ratio
from sbilab.stats.closure import closure, hessian_widths, judged_parameters
from sbilab.exceptions import ConfigError, FitError
from sbilab.simulators.shower import PartonShower, PrimaryEmissions
from sbilab.training import TrainingConfig
from _analysis_folder import write  # noqa: E402

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
[qcd_splittings]
reference_events = 500
closure_datasets = 2
set_size = 10
block = 24
posterior_sets = 60
"""


def test_pipeline_flags_an_undertrained_likelihood_and_reports(tmp_path):
    # one epoch on 10^3 events per class: the closure test must catch the bias and the run must fail loudly
    with pytest.raises(FitError, match="BIASED: the closure test failed"):
        run_analysis(load_config(write(tmp_path, CONFIG)), out=tmp_path / "out", progress=False)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())  # written before failing
    assert doc["valid"] is False and doc["hadronisation"] is False
    assert set(doc["shower"]["methods"]) == {"carl", "alices"}
    assert any(not r["closure"]["passed"] for r in doc["shower"]["methods"].values())
    judging = doc["shower"]["closure_judging"]  # every parameter is either judged or reported with its reason
    assert sorted(judging["judged"] + list(judging["not_judged"])) == ["C", "D", "F"] and judging["judge_width_fraction"] == 0.2
    assert all(r["closure"]["judged"] == judging["judged"] for r in doc["shower"]["methods"].values())
    for r in doc["shower"]["methods"].values():  # the correction normalises on its own sample; the check uses another
        assert len(r["normalisation_corrected"]["normalisation"]) == 6
        worst = max(abs(c - 1) for c in r["normalisation_corrected"]["normalisation"])
        assert worst < max(abs(c - 1) for c in r["normalisation_raw"]["normalisation"]) or worst < 0.05
    toy = PrimaryEmissions()
    cr = torch.sqrt(torch.diag(torch.linalg.inv(1000 * toy.fisher_information(torch.tensor([1.0, 1.0, 0.0])))))
    assert doc["toy"]["cramer_rao"]["D"] == pytest.approx(cr[0].item(), rel=1e-9)
    assert all(math.isfinite(v) for v in doc["shower"]["joint_fisher_widths"].values())
    assert "nested" not in doc["posterior"]["architecture"] and "over its 10 events" in doc["posterior"]["architecture"]
    assert (tmp_path / "out" / "estimator.h5").is_file() and (tmp_path / "out" / "results.h5").is_file()


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

    def exact(x, th, mask=None):
        return toy.log_prob(x, th, mask) - toy.log_prob(x, ref.to(th), mask)

    widths = hessian_widths(exact, toy.space, ev.x, truth, mask=ev.mask)
    cr = torch.sqrt(torch.diag(torch.linalg.inv(40000 * toy.fisher_information(truth))))
    torch.testing.assert_close(widths[:2], cr[:2], rtol=0.05, atol=0)  # D, F: observed vs expected information
    assert widths[2].item() == pytest.approx(cr[2].item(), rel=0.3)  # C: few events carry its information


def test_closure_passes_for_the_exact_ratio_and_fails_for_a_shifted_one():
    toy = PrimaryEmissions()
    truth = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    data = [toy.simulate(20000, theta=truth.float(), generator=torch.Generator().manual_seed(k)) for k in range(2)]  # C needs 2e4 events to stay off its limits
    ref = toy.space.reference

    def exact(x, th, mask=None):
        return toy.log_prob(x, th, mask) - toy.log_prob(x, ref.to(th), mask)

    good = closure(exact, toy.space, data, truth)
    assert good["passed"] and len(good["pulls"]) == 2
    shifted = closure(lambda x, th, mask=None: exact(x, th, mask) + 0.05 * th[:, 0], toy.space, data, truth)  # a per-theta offset: ~9 sigma in D
    assert not shifted["passed"] and any("D" in p for p in shifted["problems"])


def test_judged_parameters_compares_the_expected_width_with_a_fraction_of_the_range():
    space = PrimaryEmissions().space  # D, F in [0.5, 1.5], C in [-0.5, 1.5]
    assert judged_parameters(space, None, 0.25) == {}
    out = judged_parameters(space, torch.tensor([0.25, 0.2501, 0.5]), 0.25)  # limits 0.25, 0.25, 0.5: F just above
    assert list(out) == ["F"] and "0.25" in out["F"]
    assert list(judged_parameters(space, torch.tensor([0.01, math.nan, 0.1]), 0.25)) == ["F"]  # no width: not constrained
    with pytest.raises(ConfigError, match="judge_width_fraction"):
        SplittingsSection(judge_width_fraction=0.0).check("[qcd_splittings]")


def test_closure_profiles_an_unconstrained_parameter_and_still_fails_a_biased_judged_one():
    toy = PrimaryEmissions()
    truth = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    n = 2000  # Cramer-Rao widths (0.031, 0.131, 2.14): C's exceeds a quarter of its range (0.5), D's and F's do not
    data = [toy.simulate(n, theta=truth.float(), generator=torch.Generator().manual_seed(k)) for k in range(2)]
    widths = torch.sqrt(torch.diag(torch.linalg.inv(n * toy.fisher_information(truth))))
    ref = toy.space.reference

    def exact(x, th, mask=None):
        return toy.log_prob(x, th, mask) - toy.log_prob(x, ref.to(th), mask)

    judged_all = closure(exact, toy.space, data, truth)  # the exact likelihood: C runs to a limit of its box
    assert not judged_all["passed"] and all("C" in p for p in judged_all["problems"])
    good = closure(exact, toy.space, data, truth, expected_widths=widths, max_width_fraction=0.25)
    assert good["passed"], good["problems"]
    assert good["judged"] == ["D", "F"] and list(good["not_judged"]) == ["C"] and "not constrained" in good["not_judged"]["C"]
    assert any(not f["valid"] and f["accepted"] for f in good["fits"])  # C at a limit made a fit not valid; not judged
    # a per-event offset 0.08 D shifts D by about 0.08 n / (n I_DD) ~ 5 sigma: the judged D must still fail
    biased = closure(lambda x, th, mask=None: exact(x, th, mask) + 0.08 * th[:, 0], toy.space, data, truth,
                     expected_widths=widths, max_width_fraction=0.25)
    assert not biased["passed"] and any(p.startswith("D: mean pull") for p in biased["problems"])
    assert not any(p.startswith("C") for p in biased["problems"])


def test_gold_ratio_on_particle_sets_plugs_into_the_normalised_unbinned_fit():
    from sbilab.stats import UnbinnedLikelihood

    shower = PartonShower(output="thrust_frame")
    training = TrainingConfig(epochs=1, seed=0, validation_fraction=0.0, patience=None)
    est = train_splitting_ratio(shower, "alices", 150, training, alpha=0.1, hidden=(16,),
                      embedding={"kind": "deepsets", "out_features": 8, "hidden": [16], "latent": 8})
    assert est.is_set
    fn = normalised(est, shower, 300, seed=4)
    with torch.no_grad():  # normalised on its reference sample: E_ref[exp(log r)] = 1 at any theta
        lz = fn.log_normalization(torch.tensor([[1.3, 0.7, 0.4]]))
        assert abs(lz.item()) > 1e-4
        point = torch.tensor([[1.3, 0.7, 0.4]]).expand(300, 3)
        assert torch.logsumexp(fn(fn.reference, point, mask=fn.reference_mask), 0).item() == pytest.approx(math.log(300), abs=1e-5)
    observed = shower.simulate(100, theta=torch.tensor([1.0, 1.0, 0.0]), generator=torch.Generator().manual_seed(1))
    result = UnbinnedLikelihood(fn, observed.replace(latent=None, latent_mask=None), shower.space).fit()
    assert set(result.best) == {"D", "F", "C"} and all(math.isfinite(v) for v in result.best.values())
