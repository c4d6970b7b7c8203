"""DCTR refinement: classifier weights against the exact density ratio of two Gaussians, ESS warnings."""

import math

import pytest
import torch

from sbilab.exceptions import ConfigError
from sbilab.surrogates import LowEffectiveSampleSizeWarning, log_weight, refinement_weights, train_refinement

# "original" N(0, 1) and a slightly wrong "surrogate" N(0.3, 1.2²): the exact ratio is known
MU, SIGMA = 0.3, 1.2


def exact_log_ratio(x):
    return (-0.5 * x**2) - (-0.5 * ((x - MU) / SIGMA) ** 2 - math.log(SIGMA))


@pytest.fixture(scope="module")
def refinement():
    g = torch.Generator().manual_seed(0)
    surrogate = MU + SIGMA * torch.randn(20000, 1, generator=g)
    original = torch.randn(20000, 1, generator=g)
    return train_refinement(surrogate, original, hidden=(32, 32), epochs=12, batch_size=512, learning_rate=5e-3, seed=0)


def test_weights_are_calibrated_against_the_exact_ratio(refinement):
    x = torch.linspace(-2.0, 2.0, 21).reshape(-1, 1)
    learned = log_weight(refinement, x).detach()
    assert float((learned - exact_log_ratio(x[:, 0].double())).abs().max()) < 0.1


def test_reweighted_surrogate_reproduces_the_original(refinement):
    g = torch.Generator().manual_seed(1)
    fresh = MU + SIGMA * torch.randn(40000, 1, generator=g)
    result = refinement_weights(refinement, fresh)
    w = result.weights
    mean = float((w * fresh[:, 0].double()).sum() / w.sum())
    var = float((w * (fresh[:, 0].double() - mean) ** 2).sum() / w.sum())
    assert abs(mean) < 0.03 and var == pytest.approx(1.0, abs=0.05)
    assert result.normalisation == pytest.approx(1.0, abs=0.03)  # E_sur[w] = 1 for a calibrated ratio
    # the ESS of the exact weights: N / E_sur[r²], E_sur[r²] = ∫ p²/q = 1.0745 for these two Gaussians
    exact_r2 = SIGMA**2 / math.sqrt(2 * SIGMA**2 - 1) * math.exp(MU**2 / (2 * SIGMA**2 - 1))
    assert result.effective_sample_size / 40000 == pytest.approx(1 / exact_r2, abs=0.03)


def test_a_low_effective_sample_size_is_announced():
    # surrogate N(0, 1) for an original N(1.5, 1): log r = 1.5 x - 1.125, exact ESS/N = exp(-1.5²) = 0.105
    g = torch.Generator().manual_seed(2)
    far = train_refinement(torch.randn(4000, 1, generator=g), 1.5 + torch.randn(4000, 1, generator=g), hidden=(16,), epochs=10,
                           learning_rate=1e-2, seed=0)
    with pytest.warns(LowEffectiveSampleSizeWarning, match=r"effective sample size \d+\.\d of 4000 events \((\d+\.\d)%\)"):
        result = refinement_weights(far, torch.randn(4000, 1, generator=g), ess_threshold=0.5)
    assert result.effective_sample_size < 0.5 * 4000
    with pytest.raises(ConfigError, match="ess_threshold"):
        refinement_weights(far, torch.zeros(3, 1), ess_threshold=1.5)


def test_ratio_agreement_and_exact_stage_ratio():
    from sbilab.simulators.toys import Resonance
    from sbilab.surrogates import ResonanceDetector, ratio_agreement, stage_log_ratio

    exact = torch.linspace(-1, 1, 101, dtype=torch.float64)
    perfect = ratio_agreement(exact + 3.0, exact)                 # a constant offset does not count
    assert perfect["correlation"] == pytest.approx(1.0) and perfect["rms_difference"] == pytest.approx(0.0, abs=1e-12)
    assert ratio_agreement(-exact, exact)["correlation"] == pytest.approx(-1.0)
    # a stage against itself: log-ratio zero everywhere
    det = ResonanceDetector(Resonance())
    z, x = torch.tensor([[90.0], [100.0]], dtype=torch.float64), torch.tensor([[91.0], [99.0]], dtype=torch.float64)
    assert torch.equal(stage_log_ratio(det, det, z, x), torch.zeros(2, dtype=torch.float64))
