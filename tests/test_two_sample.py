import math

import pytest
import torch

from sbilab.exceptions import ShapeMismatchError
from sbilab.stats.two_sample import _FlatMLP, c2st, c2st_batch


def test_handwritten_gradient_matches_autograd():
    g = torch.Generator().manual_seed(0)
    net = _FlatMLP((3, 7, 7, 1), 4, g)
    x, y = torch.randn(4, 25, 3, generator=g), (torch.rand(4, 25, generator=g) > 0.5).float()
    alpha = 0.3
    loss, grad = net.loss_and_grad(x, y, alpha)
    flat = net.flat.clone().requires_grad_()
    net.flat = flat
    net.views()
    h = x
    for i, (w, b) in enumerate(zip(net.w, net.b)):
        h = torch.baddbmm(b, h, w)
        if i < 2:
            h = torch.relu(h)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(h[..., 0], y, reduction="none").mean(1)
    ref = ref + 0.5 * alpha / 25 * sum(w.square().sum((1, 2)) for w in net.w)
    (auto,) = torch.autograd.grad(ref.sum(), flat)
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad, auto, rtol=1e-5, atol=1e-6)


def test_batch_equals_single_calls():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 400, 2, generator=g)
    b = torch.randn(3, 400, 2, generator=g) + torch.tensor([0.0, 0.5, 3.0])[:, None, None]
    batched = c2st_batch(a, b, max_epochs=30, seed=3)
    single = [c2st(a[i], b[i], max_epochs=30, seed=3) for i in range(3)]
    for rb, rs in zip(batched, single):
        assert rb.accuracy == pytest.approx(rs.accuracy, abs=0.01)
        assert list(rb.epochs) == pytest.approx(list(rs.epochs), abs=2)
    assert batched[0].accuracy < 0.56 and batched[2].accuracy > 0.95


def test_bayes_accuracy_of_shifted_gaussians():
    # N(0,1) vs N(1,1): the best classifier thresholds at 1/2, accuracy Phi(1/2) = 0.6915
    g = torch.Generator().manual_seed(2)
    r = c2st(torch.randn(3000, 1, generator=g), 1 + torch.randn(3000, 1, generator=g), seed=0)
    assert r.accuracy == pytest.approx(0.5 * (1 + math.erf(0.5 / math.sqrt(2))), abs=0.02)
    assert r.auc == pytest.approx(0.5 * (1 + math.erf(0.5)), abs=0.02)  # AUC = Phi(1/sqrt 2) = 0.760
    assert (r.epochs > 11).all()  # stops only after more than `patience` epochs without improvement


def test_bad_input():
    with pytest.raises(ShapeMismatchError, match="NaN"):
        c2st(torch.full((20, 2), float("nan")), torch.zeros(20, 2))
    with pytest.raises(ShapeMismatchError, match=r"\(B, n, D\)"):
        c2st_batch(torch.zeros(2, 20, 2), torch.zeros(3, 20, 2))
