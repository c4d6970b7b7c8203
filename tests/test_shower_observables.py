"""Event shapes and jet rates against brute-force scalar implementations and three-parton closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from sbilab.exceptions import ConfigError
from sbilab.simulators.shower import PartonShower, Smearing
from sbilab.simulators.shower.observables import (
    c_parameter, durham_rates, eec_histogram, energy_correlator, event_observables, hemisphere_masses, thrust,
)


@pytest.fixture(scope="module")
def showered():
    state = PartonShower().shower(torch.tensor([[1.3, 1.0, 1.0]], dtype=torch.float64).expand(60, 3),
                                  generator=torch.Generator().manual_seed(8))
    mask = torch.arange(state.momenta.shape[1]) < state.n_particles.unsqueeze(1)
    return state.momenta, mask


def _exact_thrust(p: np.ndarray) -> float:
    """max over all sign patterns reachable by planes through pairs of particles: O(M^3)."""
    v = p[:, 1:]
    total = np.linalg.norm(v, axis=1).sum()
    best = max(np.linalg.norm(v[i]) for i in range(len(v))) * 2 if len(v) == 2 else 0.0
    for i, j in itertools.combinations(range(len(v)), 2):
        normal = np.cross(v[i], v[j])
        if np.linalg.norm(normal) < 1e-12:
            continue
        base = sum(np.sign(v[k] @ normal) * v[k] for k in range(len(v)) if k not in (i, j))
        for si, sj in itertools.product((1, -1), repeat=2):
            best = max(best, np.linalg.norm(base + si * v[i] + sj * v[j]))
    return best / total


def _durham(p: np.ndarray) -> tuple[float, float]:
    """Naive Durham clustering with E-scheme recombination, recomputing every distance at each step."""
    jets = [q.copy() for q in p]
    evis2 = p[:, 0].sum() ** 2
    y = {}
    while len(jets) > 2:
        best = None
        for a, b in itertools.combinations(range(len(jets)), 2):
            cos = jets[a][1:] @ jets[b][1:] / (np.linalg.norm(jets[a][1:]) * np.linalg.norm(jets[b][1:]))
            d = 2 * min(jets[a][0] ** 2, jets[b][0] ** 2) * (1 - cos) / evis2
            if best is None or d < best[0]:
                best = (d, a, b)
        y[len(jets)] = best[0]
        d, a, b = best
        jets[a] = jets[a] + jets[b]
        del jets[b]
    return y.get(3, 0.0), y.get(4, 0.0)


def test_thrust_and_durham_against_brute_force(showered):
    p, mask = showered
    t, axis = thrust(p, mask)
    y23, y34 = durham_rates(p, mask)
    for row in range(len(p)):
        q = p[row][mask[row]].numpy()
        assert t[row].item() == pytest.approx(_exact_thrust(q), abs=1e-12)
        want23, want34 = _durham(q)
        assert y23[row].item() == pytest.approx(want23, rel=1e-10, abs=1e-14)
        assert y34[row].item() == pytest.approx(want34, rel=1e-10, abs=1e-14)
    assert torch.allclose(axis.norm(dim=1), torch.ones(len(p), dtype=torch.float64))


def test_three_parton_closed_forms():
    # x1 = 0.9, x2 = 0.7, x3 = 0.4 (energy fractions 2E/Q) in a plane; Q = 2
    x = np.array([0.9, 0.7, 0.4])
    cos12 = 1 - 2 * (1 - x[2]) / (x[0] * x[1])
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([cos12, math.sqrt(1 - cos12**2), 0.0])
    v = np.stack([x[0] * a, x[1] * b, -(x[0] * a + x[1] * b)])
    p = torch.tensor(np.concatenate([np.linalg.norm(v, axis=1, keepdims=True), v], 1)[None])
    assert p[0, :, 0].numpy() == pytest.approx(x)
    mask = torch.ones(1, 3, dtype=torch.bool)
    t, axis = thrust(p, mask)
    assert t.item() == pytest.approx(0.9, abs=1e-12)
    heavy, light = hemisphere_masses(p, mask, axis)
    assert heavy.item() == pytest.approx(1 - 0.9, abs=1e-12) and light.item() == pytest.approx(0.0, abs=1e-12)
    assert c_parameter(p, mask).item() == pytest.approx(6 * np.prod(1 - x) / np.prod(x), rel=1e-12)
    y23, y34 = durham_rates(p, mask)
    assert y34.item() == 0.0
    assert y23.item() == pytest.approx(_durham(p[0].numpy())[0], rel=1e-12)


def test_sum_rules(showered):
    p, mask = showered
    # e2 at beta = 2 is sum_{i<j} 2 p_i.p_j / E^2 = 1 for massless momentum-conserving events
    torch.testing.assert_close(energy_correlator(p, mask, 2.0), torch.ones(len(p), dtype=torch.float64), rtol=1e-10, atol=0)
    energy = p[..., 0]
    total = eec_histogram(p, mask, torch.linspace(-1, 1, 11, dtype=torch.float64)).sum()
    want = (1 - (energy**2).sum(1) / energy.sum(1) ** 2).sum()
    assert total.item() == pytest.approx(want.item(), rel=1e-12)
    obs = event_observables(p, mask)
    assert obs.shape == (len(p), 9) and bool(torch.isfinite(obs).all())
    assert bool((obs[:, 1] >= obs[:, 2]).all())


def test_smearing():
    p = PartonShower().shower(torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64).expand(2000, 3),
                              generator=torch.Generator().manual_seed(0)).momenta
    mask = p[..., 0] > 0
    same = Smearing().apply(p, mask, torch.Generator().manual_seed(1))
    torch.testing.assert_close(same, p)
    out = Smearing(energy=0.1, angle=0.05).apply(p, mask, torch.Generator().manual_seed(1))
    assert bool((out[~mask] == 0).all())
    e0, e1 = p[..., 0][mask], out[..., 0][mask]
    ratio = e1 / e0
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.01) and ratio.std().item() == pytest.approx(0.1, rel=0.05)
    angle = torch.acos((p[..., 1:][mask] * out[..., 1:][mask]).sum(-1) / (e0 * e1)).clamp(max=1)
    assert angle.pow(2).mean().sqrt().item() == pytest.approx(0.05 * math.sqrt(2), rel=0.05)  # two transverse directions
    with pytest.raises(ConfigError, match="energy"):
        Smearing(energy=-0.1)


def test_smeared_shower_keeps_its_history_likelihood():
    theta = torch.tensor([1.2, 0.9, 0.3])
    plain = PartonShower().simulate(50, theta=theta, generator=torch.Generator().manual_seed(3))
    sim = PartonShower(smearing=Smearing(energy=0.05, angle=0.02))
    smeared = sim.simulate(50, theta=theta, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain.latent, smeared.latent) and torch.equal(plain.mask, smeared.mask)
    assert not torch.equal(plain.x, smeared.x) and torch.equal(plain.x[..., 4], smeared.x[..., 4])
    point = torch.tensor([[0.8, 1.1, 0.0]], dtype=torch.float64).expand(50, 3)
    torch.testing.assert_close(sim.joint_log_prob(smeared, point), sim.joint_log_prob(plain, point))


def test_thrust_frame_of_back_to_back_and_rotated_events(showered):
    from sbilab.simulators.shower.observables import thrust_frame

    pair = torch.tensor([[[45.6, 0.0, 0.0, 45.6], [45.6, 0.0, 0.0, -45.6], [0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    frame = thrust_frame(pair, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(frame[0], torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64))
    p, mask = showered
    a, b = 0.7, -1.1  # a rotation about y then z leaves every feature unchanged
    ry = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=torch.float64)
    rz = torch.tensor([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]], dtype=torch.float64)
    rotated = torch.cat([p[..., :1], p[..., 1:] @ (rz @ ry).T], dim=-1)
    torch.testing.assert_close(thrust_frame(rotated, mask), thrust_frame(p, mask), atol=1e-9, rtol=0)
    f = thrust_frame(p, mask)
    torch.testing.assert_close(f[..., 0].sum(1), torch.ones(len(p), dtype=torch.float64))  # x_E sums to one
    torch.testing.assert_close(f[..., 1] ** 2 + f[..., 2] ** 2, (p[..., 1:].norm(dim=-1) * mask / p[..., 0].mul(mask).sum(1, keepdim=True)) ** 2)
