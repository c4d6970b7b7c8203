r"""The response of a binned unfolding: migration matrix, efficiencies, fakes and their statistics.

For generator-level ("cause") bins :math:`C_i` and detector-level ("effect") bins :math:`E_j`,

.. math::
    R_{ji} = P(E_j,\ \text{pass reco} \mid C_i,\ \text{pass gen}), \qquad
    \varepsilon_i = \sum_j R_{ji} \le 1,

estimated from (weighted) simulation as :math:`R_{ji} = W_{ji}/T_i` with :math:`W_{ji}` the weight
of events in :math:`C_i` and :math:`E_j` that pass both selections and :math:`T_i` the weight of all
events in :math:`C_i` that pass the generator selection. Events whose generator value lies outside
the generator binning count as failing the generator selection, those whose detector value lies
outside the detector binning as failing the detector selection (RooUnfold's *miss*/*fake*
semantics). *Fakes* are events that pass the detector selection but not the generator one; their
weighted counts per effect bin, :math:`F_j`, are unfolded as one extra cause (see
:func:`~sbilab.unfolding.ibu.iterative_unfold`).

Statistics of the simulation: the columns of :math:`R` are independent (different events); with
:math:`S_{ji}` and :math:`S_i` the sums of squared weights matching :math:`W_{ji}` and :math:`T_i`,
the delta method gives

.. math::
    \operatorname{Cov}(R_{ji}, R_{ki}) = \frac{\delta_{jk} S_{ji} - R_{ki} S_{ji} - R_{ji} S_{ki}
    + R_{ji} R_{ki} S_i}{T_i^2},

which for unit weights is the multinomial covariance :math:`(\delta_{jk}R_{ji} - R_{ji}R_{ki})/N_i`
used by D'Agostini (NIM A 362 (1995) 487) and Adye (arXiv:1105.1160).

Example:
    >>> gen = torch.tensor([0.2, 0.4, 1.5, 1.7, 1.2])
    >>> reco = torch.tensor([0.3, 1.1, 1.4, 0.0, 1.6])
    >>> r = Response.from_events(gen, reco, gen_edges=[0, 1, 2], reco_edges=[0, 1, 2],
    ...                          pass_reco=torch.tensor([True, True, True, False, True]))
    >>> r.matrix.tolist(), r.efficiency.tolist(), r.truth.tolist()
    ([[0.5, 0.0], [0.5, 0.6666666666666666]], [1.0, 0.6666666666666666], [2.0, 3.0])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..exceptions import InvalidEventsError, ShapeMismatchError
from .binning import as_edges, bin_index, bin_sums

__all__ = ["Response"]


def _column(values: Tensor, name: str) -> Tensor:
    v = torch.as_tensor(values)
    if v.dim() == 2 and v.shape[1] == 1:
        v = v[:, 0]
    if v.dim() != 1:
        raise ShapeMismatchError(f"{name} must be one value per event, shape (N,) or (N, 1); got {tuple(v.shape)}.")
    return v.to(torch.float64)


def _mask(values: Tensor | None, n: int, name: str, device: torch.device | None = None) -> Tensor:
    if values is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    m = torch.as_tensor(values)
    if m.dtype != torch.bool:
        raise InvalidEventsError(f"{name} must be a bool tensor (True = event passes); got dtype {m.dtype}.")
    if m.shape != (n,):
        raise ShapeMismatchError(f"{name} has shape {tuple(m.shape)}; it needs one flag per event, ({n},).")
    return m


def _block_covariance(r: Tensor, s: Tensor, s_total: Tensor, total: Tensor) -> Tensor:
    """Delta-method covariance of the ratios ``r = W/T`` per column: ``r, s (..., E)``, ``s_total, total (...)`` -> ``(..., E, E)``."""
    t2 = torch.where(total > 0, total, torch.ones_like(total)) ** 2
    cov = torch.diag_embed(s) - r[..., :, None] * s[..., None, :] - s[..., :, None] * r[..., None, :]
    cov = cov + r[..., :, None] * r[..., None, :] * s_total[..., None, None]
    return torch.where((total > 0)[..., None, None], cov / t2[..., None, None], torch.zeros_like(cov))


@dataclass(frozen=True)
class Response:
    r"""Migration matrix of a binned unfolding with its simulation statistics.

    Attributes:
        matrix: :math:`R_{ji}`, ``(E, C)``; column sums are the efficiencies.
        matrix_covariance: Covariance of each column of ``matrix``, ``(C, E, E)`` (columns are
            independent), or ``None`` when unknown.
        truth: Weighted simulated count in each generator bin (passing the generator selection,
            whether or not it passes the detector one), ``(C,)``: the default prior. ``None`` if unknown.
        fakes: Weighted simulated count of fakes in each detector bin, ``(E,)``, or ``None``.
        fakes_covariance: Covariance of the fakes' normalised shape :math:`F_j/\sum F`, ``(E, E)``.
        gen_edges: Generator-level bin edges ``(C + 1,)`` or ``None``.
        reco_edges: Detector-level bin edges ``(E + 1,)`` or ``None``.
    """

    matrix: Tensor
    matrix_covariance: Tensor | None = None
    truth: Tensor | None = None
    fakes: Tensor | None = None
    fakes_covariance: Tensor | None = None
    gen_edges: Tensor | None = None
    reco_edges: Tensor | None = None

    @property
    def efficiency(self) -> Tensor:
        r""":math:`\varepsilon_i = \sum_j R_{ji}`, ``(C,)``."""
        return self.matrix.sum(0)

    @property
    def shape(self) -> tuple[int, int]:
        """``(E, C)``: effect (detector) and cause (generator) bins."""
        return tuple(self.matrix.shape)  # type: ignore[return-value]

    @classmethod
    def from_matrix(cls, matrix: Tensor | Sequence[Sequence[float]], *, truth: Tensor | Sequence[float] | None = None,
                    mc_counts: Tensor | Sequence[float] | None = None) -> "Response":
        r"""A response given as a matrix (pyunfold's input), with multinomial statistics.

        Args:
            matrix: :math:`R_{ji}`, ``(E, C)``, non-negative, column sums (efficiencies) at most 1.
            truth: Simulated count per generator bin ``(C,)`` (the default prior), optional.
            mc_counts: Effective number of simulated events per generator bin ``(C,)``; the
                covariance of column :math:`i` is :math:`(\operatorname{diag}R_i - R_iR_i^T)/N_i`.
                pyunfold's ``efficiencies_err`` :math:`\sigma_i` corresponds to
                :math:`N_i = (\varepsilon_i/\sigma_i)^2`.

        Raises:
            ShapeMismatchError: ``matrix`` is not 2-D, or ``truth``/``mc_counts`` not ``(C,)``.
            InvalidEventsError: negative or non-finite entries, efficiencies above 1, counts <= 0.
        """
        r = torch.as_tensor(matrix, dtype=torch.float64)
        if r.dim() != 2:
            raise ShapeMismatchError(f"matrix must be (effect bins, cause bins); got shape {tuple(r.shape)}.")
        if not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
            raise InvalidEventsError("matrix holds negative or non-finite entries; R[j, i] = P(effect j | cause i) >= 0.")
        if bool((r.sum(0) > 1 + 1e-9).any()):
            raise InvalidEventsError(f"matrix column sums (efficiencies) {r.sum(0).tolist()} exceed 1; columns are P(effect | cause).")
        n_c = r.shape[1]
        cov = None
        if mc_counts is not None:
            counts = torch.as_tensor(mc_counts, dtype=torch.float64).reshape(-1)
            if counts.shape != (n_c,):
                raise ShapeMismatchError(f"mc_counts has {counts.numel()} entries for {n_c} cause bins.")
            if not bool(torch.isfinite(counts).all()) or bool((counts <= 0).any()):
                raise InvalidEventsError(f"mc_counts must be positive and finite; got {counts.tolist()}.")
            rt = r.T  # (C, E)
            cov = (torch.diag_embed(rt) - rt[:, :, None] * rt[:, None, :]) / counts[:, None, None]
        t = None
        if truth is not None:
            t = torch.as_tensor(truth, dtype=torch.float64).reshape(-1)
            if t.shape != (n_c,):
                raise ShapeMismatchError(f"truth has {t.numel()} entries for {n_c} cause bins.")
        return cls(matrix=r, matrix_covariance=cov, truth=t)

    @classmethod
    def from_events(
        cls,
        gen: Tensor,
        reco: Tensor,
        *,
        gen_edges: Tensor | Sequence[float],
        reco_edges: Tensor | Sequence[float],
        pass_gen: Tensor | None = None,
        pass_reco: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> "Response":
        """Estimate the response from paired simulated events of one observable.

        Args:
            gen: Generator-level value per event, ``(N,)`` or ``(N, 1)``; ignored where ``pass_gen`` is False.
            reco: Detector-level value per event, ``(N,)`` or ``(N, 1)``; ignored where ``pass_reco`` is False.
            gen_edges: Generator bin edges ``(C + 1,)``.
            reco_edges: Detector bin edges ``(E + 1,)``.
            pass_gen: Generator selection ``(N,)`` bool (default: all pass).
            pass_reco: Detector selection ``(N,)`` bool (default: all pass).
            weights: Event weights ``(N,)`` (default: ones); individual weights may be negative.

        Raises:
            ShapeMismatchError: lengths differ.
            InvalidEventsError: NaN/inf in a selected value or in the weights, an event passing
                neither selection, a non-positive total weight, or a generator bin of negative weight.
            ConfigError: invalid edges.
        """
        g, x = _column(gen, "gen"), _column(reco, "reco")
        n = g.shape[0]
        if x.shape[0] != n:
            raise ShapeMismatchError(f"gen has {n} events but reco has {x.shape[0]}; they must be paired row by row.")
        pg, pr = _mask(pass_gen, n, "pass_gen", g.device), _mask(pass_reco, n, "pass_reco", g.device)
        w = torch.ones(n, dtype=torch.float64, device=g.device) if weights is None else _column(weights, "weights")
        if w.shape[0] != n:
            raise ShapeMismatchError(f"weights has {w.shape[0]} entries for {n} events.")
        if not bool(torch.isfinite(w).all()):
            raise InvalidEventsError(f"weights holds {int((~torch.isfinite(w)).sum())} NaN/inf values; fix or drop those events.")
        for name, v, m in (("gen", g, pg), ("reco", x, pr)):
            bad = m & ~torch.isfinite(v)
            if bool(bad.any()):
                raise InvalidEventsError(f"{name} is NaN/inf in {int(bad.sum())} selected events (first row {int(bad.nonzero()[0, 0])}).")
        neither = ~pg & ~pr
        if bool(neither.any()):
            raise InvalidEventsError(
                f"{int(neither.sum())} events pass neither selection (first row {int(neither.nonzero()[0, 0])}); "
                "they carry no information for unfolding: drop them."
            )
        if float(w.sum()) <= 0:
            raise InvalidEventsError(f"weights sum to {float(w.sum())}; the simulation needs a positive total weight.")
        ge, re = as_edges(gen_edges, "gen_edges"), as_edges(reco_edges, "reco_edges")
        n_c, n_e = ge.numel() - 1, re.numel() - 1
        ig = torch.where(pg, bin_index(g, ge), -1)
        ir = torch.where(pr, bin_index(x, re), -1)
        both = (ig >= 0) & (ir >= 0)
        ww = torch.stack([w, w * w])  # sums of weights and of squared weights at once
        pair = torch.where(both, ig * n_e + ir, -1)
        w_pair = bin_sums(pair, ww, n_c * n_e).reshape(2, n_c, n_e)  # (2, C, E)
        w_gen = bin_sums(ig, ww, n_c)  # (2, C)
        if bool((w_gen[0] < 0).any()):
            raise InvalidEventsError(f"generator bins {torch.nonzero(w_gen[0] < 0)[:, 0].tolist()} have negative total weight.")
        total = w_gen[0]
        r_t = torch.where(total[:, None] > 0, w_pair[0] / total.clamp_min(1e-300)[:, None], torch.zeros_like(w_pair[0]))
        cov = _block_covariance(r_t, w_pair[1], w_gen[1], total)
        fake_idx = torch.where(ig < 0, ir, -1)
        w_fake = bin_sums(fake_idx, ww, n_e)  # (2, E)
        fakes = fakes_cov = None
        if float(w_fake[0].sum()) > 0:
            f_tot = w_fake[0].sum()
            fakes = w_fake[0]
            fakes_cov = _block_covariance(w_fake[0] / f_tot, w_fake[1], w_fake[1].sum(), f_tot)
        return cls(matrix=r_t.T.contiguous(), matrix_covariance=cov, truth=total, fakes=fakes, fakes_covariance=fakes_cov,
                   gen_edges=ge, reco_edges=re)

    def fold(self, truth: Tensor) -> Tensor:
        """Expected detector-level counts of generator-level counts ``truth (..., C)`` (fakes not added), ``(..., E)``."""
        return torch.as_tensor(truth, dtype=torch.float64) @ self.matrix.T

    def event_weights(self, unfolded: Tensor, gen: Tensor, *, pass_gen: Tensor | None = None,
                      weights: Tensor | None = None) -> Tensor:
        r"""Per-event weights that reweight the simulation to an unfolded histogram.

        Each simulated event in generator bin :math:`i` gets :math:`w \cdot u_i / T_i` (its weight
        times the ratio of unfolded to simulated count); events outside the generator binning or
        failing ``pass_gen`` get 0. The weighted simulation then has histogram ``unfolded``.

        Args:
            unfolded: Unfolded counts ``(..., C)`` (any leading batch dimensions).
            gen: Generator-level values of the simulated events, ``(N,)`` or ``(N, 1)``.
            pass_gen: Generator selection ``(N,)`` bool (default: all pass).
            weights: Their weights ``(N,)`` (default: ones).

        Returns:
            ``(..., N)`` weights.

        Raises:
            InvalidEventsError: the response has no ``truth`` or ``gen_edges`` (built by ``from_matrix``).
        """
        if self.truth is None or self.gen_edges is None:
            raise InvalidEventsError("event_weights needs a response built by Response.from_events (truth and gen_edges).")
        g = _column(gen, "gen")
        idx = torch.where(_mask(pass_gen, g.shape[0], "pass_gen", g.device), bin_index(g, self.gen_edges), -1)
        truth = self.truth.to(g.device)
        ratio = torch.where(truth > 0, torch.as_tensor(unfolded, dtype=torch.float64, device=g.device) / truth.clamp_min(1e-300), 0.0)
        w = torch.ones_like(g) if weights is None else _column(weights, "weights")
        return torch.where(idx >= 0, ratio[..., idx.clamp_min(0)] * w, torch.zeros_like(w))
