"""hist output: edges + counts + variances <-> hist.Hist round trips, open outer bins as flow bins."""

import importlib.util

import numpy as np
import pytest
import torch

from sbilab.exceptions import ShapeMismatchError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("hist") is None, reason="hist not installed (optional extra 'hist': pip install 'sbilab[hist]')")


def test_one_axis_round_trip_with_variances_names_and_labels():
    from sbilab.io.hist import from_hist, to_hist

    edges = np.array([0.0, 0.5, 2.0, 3.5])
    counts = np.array([4.25, 0.0, 7.0])
    variances = np.array([2.5, 0.0, 13.75])
    h = to_hist(edges, torch.tensor(counts), variances, names="score", labels=r"$\hat t(x)$", label="signal")
    np.testing.assert_array_equal(h.values(), counts)
    np.testing.assert_array_equal(h.variances(), variances)
    np.testing.assert_array_equal(h.axes[0].edges, edges)
    assert (h.axes[0].name, h.axes[0].label, h.label) == ("score", r"$\hat t(x)$", "signal")
    assert h.sum().value == counts.sum() and h.sum().variance == variances.sum()
    back_edges, back_counts, back_var = from_hist(h)
    np.testing.assert_array_equal(back_edges[0], edges)
    np.testing.assert_array_equal(back_counts, counts)
    np.testing.assert_array_equal(back_var, variances)


def test_open_outer_bins_become_flow_bins():
    """Quantile edges of the search templates are open at both ends (±inf)."""
    from sbilab.io.hist import from_hist, to_hist

    edges = np.array([-np.inf, -1.0, 0.0, 1.0, np.inf])
    values = np.random.default_rng(0).exponential(10.0, 4)
    h = to_hist(edges, values, values / 2)
    np.testing.assert_array_equal(h.axes[0].edges, [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(h.values(flow=True), values)
    np.testing.assert_array_equal(h.variances(flow=True), values / 2)
    back_edges, back_values, back_var = from_hist(h)
    np.testing.assert_array_equal(back_edges[0], edges)
    np.testing.assert_array_equal(back_values, values)
    np.testing.assert_array_equal(back_var, values / 2)
    _, inner, _ = from_hist(h, flow=False)
    np.testing.assert_array_equal(inner, values[1:3])


def test_two_axes_and_no_variances():
    from sbilab.io.hist import from_hist, to_hist

    edges = [np.array([0.0, 1.0, 2.0]), np.array([-np.inf, 0.0, 10.0, 30.0])]
    counts = np.arange(6.0).reshape(2, 3) + 1
    h = to_hist(edges, counts, counts * 1.5, names=["m", "pt"])
    back_edges, back_counts, back_var = from_hist(h)
    np.testing.assert_array_equal(back_counts, counts)
    np.testing.assert_array_equal(back_var, counts * 1.5)
    np.testing.assert_array_equal(back_edges[1], edges[1])
    plain = to_hist(edges[0], counts[:, 0])
    assert plain.storage_type.__name__ == "Double" and from_hist(plain)[2] is None


def test_histograms_of_weighted_events_match_hist_fill():
    """A histogram made the way the templates are (sum of weights, sum of squared weights) equals hist's own fill."""
    import hist

    from sbilab.io.hist import to_hist

    g = np.random.default_rng(1)
    x, w = g.normal(size=500), g.uniform(0.1, 2.0, 500)
    edges = np.linspace(-3, 3, 13)
    counts, _ = np.histogram(x, edges, weights=w)
    sumw2, _ = np.histogram(x, edges, weights=w**2)
    ours = to_hist(edges, counts, sumw2, names="x")
    ref = hist.Hist(hist.axis.Variable(edges, name="x"), storage=hist.storage.Weight()).fill(x=x, weight=w)
    np.testing.assert_allclose(ours.values(), ref.values(), rtol=1e-12)
    np.testing.assert_allclose(ours.variances(), ref.variances(), rtol=1e-12)


def test_mismatches_are_named():
    from sbilab.io.hist import to_hist

    with pytest.raises(ShapeMismatchError, match="do not match the edges"):
        to_hist([0.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ShapeMismatchError, match="must increase"):
        to_hist([0.0, 2.0, 1.0], [1.0, 2.0])
    with pytest.raises(ShapeMismatchError, match="no finite bin"):
        to_hist([-np.inf, np.inf], [1.0])
    with pytest.raises(ShapeMismatchError, match="2 axis names"):
        to_hist([0.0, 1.0], [1.0], names=["a", "b"])
