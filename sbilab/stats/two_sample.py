r"""Classifier two-sample tests (C2ST) with sbibm's MLP classifier, many tests trained as one batch.

The C2ST (Lopez-Paz & Oquab, arXiv:1610.06545) as the sbibm benchmark runs it (Lueckmann et al.,
arXiv:2101.04653, ``sbibm.metrics.c2st``): both sample sets are z-scored with the first set's
moments, scikit-learn's ``MLPClassifier`` (two hidden ReLU layers of ``10·D`` units, Adam with
lr 1e-3, batches of 200, L2 penalty :math:`\alpha = 10^{-4}`, Glorot-uniform initialisation,
data reshuffled every epoch) is trained on 4/5 of the pooled samples and scored on the held-out
fifth, for each of 5 folds; the reported figure is the mean held-out accuracy (0.5:
indistinguishable, 1: disjoint), or the ROC AUC. Training stops as scikit-learn's does without a
validation split: when the epoch's mean training loss has failed to beat the best so far by
``tol`` in more than ``patience`` consecutive epochs; the last weights are kept.

All ``B × folds`` classifiers of :func:`c2st_batch` are trained at once by batched matrix
products with a hand-written backward pass and one Adam update over a flat parameter buffer;
classifiers that have stopped are dropped from the batch. Every test uses the same random stream
(folds, initialisation, shuffles) as a lone :func:`c2st` call with the same seed, so batching
changes a result only by floating-point rounding of the batched products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..calibration import weighted_auc
from ..exceptions import ShapeMismatchError

__all__ = ["C2STResult", "c2st", "c2st_batch"]


@dataclass(frozen=True)
class C2STResult:
    """Classifier two-sample test outcome: ``accuracy`` (or AUC) averaged over folds.

    Attributes:
        accuracy: Mean held-out accuracy over the folds.
        auc: Mean held-out ROC AUC over the folds.
        folds: Held-out accuracy per fold, ``(folds,)``.
        tolerance: Passes when ``accuracy <= 0.5 + tolerance``.
        passed: The verdict.
        probabilities: Held-out classifier outputs P(set B) for the samples of set A and of set B.
        epochs: Epochs each fold's classifier trained, ``(folds,)``.
    """

    accuracy: float
    auc: float
    folds: np.ndarray
    tolerance: float
    passed: bool
    probabilities: tuple[np.ndarray, np.ndarray] = field(repr=False)
    epochs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)

    def plot(self, path: str | Path) -> Path:
        """Histogram of held-out classifier outputs for both sets to a PNG file."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.2, 4))
        bins = np.linspace(0, 1, 41)
        ax.hist(self.probabilities[0], bins=bins, alpha=0.6, label="set A")
        ax.hist(self.probabilities[1], bins=bins, alpha=0.6, label="set B")
        ax.set_xlabel("classifier P(set B)")
        ax.set_title(f"C2ST accuracy {self.accuracy:.3f}, AUC {self.auc:.3f}")
        ax.legend()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def c2st(a: Any, b: Any, *, folds: int = 5, hidden: int | None = None, batch_size: int = 200, learning_rate: float = 1e-3,
         weight_decay: float = 1e-4, max_epochs: int = 10000, tol: float = 1e-4, patience: int = 10, tolerance: float = 0.05,
         seed: int = 0) -> C2STResult:
    r"""Classifier two-sample test with sbibm's MLP classifier (all folds trained as one batch).

    Args:
        a: Samples ``(n, D)`` (e.g. reference posterior); its moments z-score both sets.
        b: Samples ``(m, D)`` (e.g. approximate posterior).
        folds: Cross-validation folds.
        hidden: Width of both hidden layers (default ``10·D``).
        max_epochs: Upper bound on epochs (scikit-learn's ``max_iter``; sbibm: 10000).
        tol: Smallest decrease of the epoch loss that counts as an improvement.
        patience: Stop after more than this many epochs without improvement.
        tolerance: Passes when accuracy <= 0.5 + tolerance.
        seed: Seed of folds, initialisation and shuffling.

    Returns:
        :class:`C2STResult` with mean held-out accuracy and AUC over the folds.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> near = c2st(torch.randn(1000, 2, generator=g), torch.randn(1000, 2, generator=g), max_epochs=50)
        >>> far = c2st(torch.randn(1000, 2, generator=g), 5 + torch.randn(1000, 2, generator=g), max_epochs=50)
        >>> near.accuracy < 0.56, far.accuracy > 0.99
        (True, True)
    """
    xa, xb = _as_float(a, "a"), _as_float(b, "b")
    if xa.dim() != 2 or xb.dim() != 2:
        raise ShapeMismatchError(f"c2st: a and b must be (n, D) and (m, D), got {tuple(xa.shape)} and {tuple(xb.shape)}.")
    return c2st_batch(xa[None], xb[None], folds=folds, hidden=hidden, batch_size=batch_size, learning_rate=learning_rate,
                      weight_decay=weight_decay, max_epochs=max_epochs, tol=tol, patience=patience, tolerance=tolerance, seed=seed)[0]


def c2st_batch(a: Any, b: Any, *, folds: int = 5, hidden: int | None = None, batch_size: int = 200, learning_rate: float = 1e-3,
               weight_decay: float = 1e-4, max_epochs: int = 10000, tol: float = 1e-4, patience: int = 10,
               tolerance: float = 0.05, seed: int = 0, progress: bool = False) -> list[C2STResult]:
    r"""``B`` independent classifier two-sample tests trained together; same results as ``B`` :func:`c2st` calls.

    Args:
        a: First sample sets ``(B, n, D)`` (a tensor, or a sequence of ``(n, D)`` arrays).
        b: Second sample sets ``(B, m, D)``.
        progress: Show a progress bar over epochs.
        Others: as in :func:`c2st`.

    Returns:
        One :class:`C2STResult` per test, in order.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a = torch.randn(2, 800, 2, generator=g)
        >>> b = torch.randn(2, 800, 2, generator=g) + torch.tensor([[[0.0, 0.0]], [[4.0, 0.0]]])
        >>> [round(r.accuracy, 1) for r in c2st_batch(a, b, max_epochs=40)]
        [0.5, 1.0]
    """
    xa, xb = _as_float(a, "a"), _as_float(b, "b")
    if xa.dim() != 3 or xb.dim() != 3 or xa.shape[0] != xb.shape[0] or xa.shape[2] != xb.shape[2]:
        raise ShapeMismatchError(f"c2st_batch: a and b must be (B, n, D) and (B, m, D), got {tuple(xa.shape)} and {tuple(xb.shape)}.")
    if not bool(torch.isfinite(xa).all() & torch.isfinite(xb).all()):
        raise ShapeMismatchError("c2st: samples contain NaN or inf values; drop or fix those rows first.")
    if folds < 2 or xa.shape[1] + xb.shape[1] < 2 * folds:
        raise ShapeMismatchError(f"c2st: need folds >= 2 and at least 2*folds samples, got folds={folds}, n+m={xa.shape[1] + xb.shape[1]}.")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batched matmuls: threading only adds contention
    try:
        with torch.no_grad():
            return _run(xa, xb, folds=folds, hidden=hidden, batch_size=batch_size, lr=learning_rate, alpha=weight_decay,
                        max_epochs=max_epochs, tol=tol, patience=patience, tolerance=tolerance, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(threads)


def _as_float(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().float()
    if isinstance(x, (list, tuple)) and x and not np.isscalar(x[0]):
        return torch.stack([_as_float(v, name) for v in x])
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


def _run(xa: Tensor, xb: Tensor, *, folds: int, hidden: int | None, batch_size: int, lr: float, alpha: float,
         max_epochs: int, tol: float, patience: int, tolerance: float, seed: int, progress: bool) -> list[C2STResult]:
    n_tests, n_a, d = xa.shape
    mean, std = xa.mean(1, keepdim=True), xa.std(1, keepdim=True).clamp_min(1e-12)
    data = torch.cat([(xa - mean) / std, (xb - mean) / std], 1)  # (B, N, D)
    target = torch.cat([torch.zeros(n_a), torch.ones(xb.shape[1])])  # (N,)
    n = data.shape[1]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    bounds = torch.linspace(0, n, folds + 1).round().long()
    test_sets = [perm[bounds[k]:bounds[k + 1]] for k in range(folds)]
    n_train = min(n - len(t) for t in test_sets)
    train_sets = torch.stack([torch.cat([perm[: bounds[k]], perm[bounds[k + 1]:]])[:n_train] for k in range(folds)])
    h = hidden or 10 * d
    net = _FlatMLP((d, h, h, 1), folds, g)  # one initialisation per fold, shared by every test
    k_all = n_tests * folds
    net.repeat(n_tests)  # classifier c = test * folds + fold
    test_of = torch.arange(k_all) // folds
    fold_of = torch.arange(k_all) % folds
    alive = torch.arange(k_all)  # classifiers still training, in batch order
    final = torch.empty(k_all, net.flat.shape[1])
    epochs = torch.zeros(k_all, dtype=torch.long)
    best = torch.full((k_all,), math.inf)
    stall = torch.zeros(k_all, dtype=torch.long)
    m, v = torch.zeros_like(net.flat), torch.zeros_like(net.flat)
    beta1, beta2, eps, step = 0.9, 0.999, 1e-8, 0
    bs = min(batch_size, n_train)
    bar = _bar(progress, max_epochs)
    for epoch in range(max_epochs):
        order = torch.rand(folds, n_train, generator=g).argsort(-1)  # same draws as a lone test
        idx = train_sets.gather(1, order)[fold_of[alive]]  # (K, n_train)
        rows = test_of[alive][:, None]
        total = torch.zeros(len(alive))
        for start in range(0, n_train, bs):
            bi = idx[:, start:start + bs]
            loss, grad = net.loss_and_grad(data[rows, bi], target[bi], alpha)
            total += loss * bi.shape[1]
            step += 1  # Adam as scikit-learn writes it: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t)
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            lr_t = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
            net.flat.addcdiv_(m, v.sqrt().add_(eps), value=-lr_t)
        epoch_loss = total / n_train
        improved = epoch_loss <= best[alive] - tol
        stall[alive] = torch.where(improved, 0, stall[alive] + 1)
        best[alive] = torch.minimum(best[alive], epoch_loss)
        epochs[alive] = epoch + 1
        done = (stall[alive] > patience) | (epoch + 1 == max_epochs)
        if bool(done.any()):
            final[alive[done]] = net.flat[done]
            keep = ~done
            alive, m, v = alive[keep], m[keep], v[keep]
            net.select(keep)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(training=len(alive))
        if len(alive) == 0:
            break
    if bar is not None:
        bar.close()
    net.flat = final
    net.views()
    results = []
    for t in range(n_tests):
        accs, aucs, pa, pb = [], [], [], []
        for k, test in enumerate(test_sets):
            logit = net.logits(data[t, test].unsqueeze(0), t * folds + k)
            y = target[test]
            accs.append(float(((logit > 0).float() == y).float().mean()))
            aucs.append(weighted_auc(logit[y == 1], logit[y == 0]))
            prob = torch.sigmoid(logit)
            pa.append(prob[y == 0].numpy())
            pb.append(prob[y == 1].numpy())
        acc = float(np.mean(accs))
        results.append(C2STResult(acc, float(np.mean(aucs)), np.asarray(accs), tolerance, acc <= 0.5 + tolerance,
                                  (np.concatenate(pa), np.concatenate(pb)), epochs[t * folds:(t + 1) * folds].numpy()))
    return results


class _FlatMLP:
    """``K`` ReLU MLPs with all parameters in one ``(K, P)`` buffer; weights are views ``(K, in, out)``."""

    def __init__(self, sizes: Sequence[int], k: int, g: torch.Generator) -> None:
        self.sizes = tuple(sizes)
        parts = []
        for i, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            factor = 2.0 if i == len(self.sizes) - 2 else 6.0  # scikit-learn: sqrt(2/(in+out)) for the logistic output
            bound = math.sqrt(factor / (fan_in + fan_out))
            parts.append((torch.rand(k, fan_in * fan_out, generator=g) * 2 - 1) * bound)
            parts.append((torch.rand(k, fan_out, generator=g) * 2 - 1) * bound)
        self.flat = torch.cat(parts, 1)
        self.views()

    def views(self) -> None:
        self.w, self.b, off = [], [], 0
        k = self.flat.shape[0]
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            self.w.append(self.flat[:, off:off + fan_in * fan_out].view(k, fan_in, fan_out))
            off += fan_in * fan_out
            self.b.append(self.flat[:, off:off + fan_out].view(k, 1, fan_out))
            off += fan_out

    def repeat(self, times: int) -> None:
        self.flat = self.flat.repeat(times, 1)
        self.views()

    def select(self, keep: Tensor) -> None:
        self.flat = self.flat[keep]
        self.views()

    def logits(self, x: Tensor, member: int) -> Tensor:
        """Logits ``(n,)`` of one member for ``x (1, n, D)``."""
        h = x
        for i, (w, b) in enumerate(zip(self.w, self.b)):
            h = torch.baddbmm(b[member:member + 1], h, w[member:member + 1])
            if i < len(self.w) - 1:
                h = h.clamp_min_(0)
        return h[0, :, 0]

    def loss_and_grad(self, x: Tensor, y: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
        r"""Mean cross-entropy + :math:`\frac{\alpha}{2n}\sum W^2` per member and its gradient ``(K, P)``.

        ``x (K, n, D)``, ``y (K, n)``; the backward pass is written out (no autograd graph).
        """
        n = x.shape[1]
        acts = [x]
        for w, b in zip(self.w[:-1], self.b[:-1]):
            acts.append(torch.baddbmm(b, acts[-1], w).clamp_min_(0))
        logit = torch.baddbmm(self.b[-1], acts[-1], self.w[-1])[..., 0]  # (K, n)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, y, reduction="none").mean(1)
        l2 = sum(w.square().sum((1, 2)) for w in self.w)
        loss = bce + (0.5 * alpha / n) * l2
        delta = (torch.sigmoid(logit) - y).div_(n).unsqueeze(-1)  # dL/dlogit, (K, n, 1)
        grads: list[Tensor] = []
        for i in range(len(self.w) - 1, -1, -1):
            gw = torch.baddbmm(self.w[i], acts[i].transpose(1, 2), delta, beta=alpha / n)
            grads.append(delta.sum(1))
            grads.append(gw.flatten(1))
            if i > 0:
                delta = torch.ops.aten.threshold_backward(torch.bmm(delta, self.w[i].transpose(1, 2)), acts[i], 0.0)
        return loss, torch.cat(grads[::-1], 1)


def _bar(progress: bool, total: int):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="c2st", unit="epoch", leave=False)
