"""Bin indices follow numpy.histogram's conventions exactly (equal-width fast path and general edges)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbilab.exceptions import ConfigError
from sbilab.unfolding.binning import as_edges, bin_index, bin_sums, flat_bin_index


@pytest.mark.parametrize("edges", [np.linspace(-4, 4, 51), np.array([-1.0, 0.0, 0.3, 2.0]), np.linspace(0.1, 0.7, 7)])
def test_bin_index_is_numpys(edges):
    g = torch.Generator().manual_seed(0)
    e = torch.tensor(edges)
    v = torch.cat([3 * torch.randn(50_000, generator=g, dtype=torch.float64), e, e + 1e-15, e - 1e-15,
                   torch.tensor([float("nan"), float("inf"), -float("inf"), 1e300])])
    ref = np.digitize(v.numpy(), edges) - 1
    ref[v.numpy() == edges[-1]] = len(edges) - 2  # the last bin includes its upper edge
    ref[(ref < 0) | (ref >= len(edges) - 1) | np.isnan(v.numpy())] = -1
    np.testing.assert_array_equal(bin_index(v, e).numpy(), ref)
    counts = bin_sums(bin_index(v, e), torch.ones(len(v), dtype=torch.float64)[None].expand(2, -1), len(edges) - 1)
    np.testing.assert_array_equal(counts[1].numpy(), np.histogram(v.numpy()[np.isfinite(v.numpy())], edges)[0])


def test_flat_index_is_row_major_and_edges_are_checked():
    ex, ey = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 1.0, 2.0, 3.0])
    idx = flat_bin_index([torch.tensor([0.5, 1.5, 1.5, 5.0]), torch.tensor([2.5, 0.5, 1.5, 0.5])], [ex, ey])
    assert idx.tolist() == [2, 3, 4, -1]
    with pytest.raises(ConfigError):
        as_edges([0.0, 0.0, 1.0])
