import pytest
import torch

from sbilab import ParameterSpace
from sbilab.exceptions import OutOfSupportError, ParameterSpaceError


def test_uniform_sampling_inside_and_reproducible():
    space = ParameterSpace(("M", "Gamma"), low=(95.0, 2.0), high=(105.0, 8.0))
    a = space.sample(20000, generator=torch.Generator().manual_seed(5))
    b = space.sample(20000, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert bool(space.contains(a).all())
    # uniform moments: mean (100, 5), variance width^2/12
    torch.testing.assert_close(a.double().mean(0), torch.tensor([100.0, 5.0], dtype=torch.float64), atol=0.06, rtol=0)
    torch.testing.assert_close(a.double().var(0), torch.tensor([100 / 12, 36 / 12], dtype=torch.float64), rtol=0.03, atol=0)
    torch.testing.assert_close(space.reference, torch.tensor([100.0, 5.0], dtype=torch.float64))


def test_bad_definitions():
    with pytest.raises(ParameterSpaceError, match="low=3.0 >= high=1.0"):
        ParameterSpace(("a",), low=(3.0,), high=(1.0,))
    with pytest.raises(ParameterSpaceError, match="unique"):
        ParameterSpace(("a", "a"), low=(0, 0), high=(1, 1))
    with pytest.raises(ParameterSpaceError, match="proposal"):
        ParameterSpace(("a",), low=(-float("inf"),), high=(1.0,))
    with pytest.raises(OutOfSupportError):
        ParameterSpace(("a",), low=(0.0,), high=(1.0,), reference=(2.0,))
    space = ParameterSpace(("a", "b"), low=(0, 0), high=(1, 1))
    with pytest.raises(ParameterSpaceError, match=r"\['a', 'b'\]"):
        space.index("c")
    with pytest.raises(OutOfSupportError, match=r"expected \(N, 2\)"):
        space.check(torch.zeros(3, 1))


def test_sbi_prior_as_proposal():
    from sbi.utils import BoxUniform

    prior = BoxUniform(low=torch.tensor([-1.0, 0.0]), high=torch.tensor([1.0, 4.0]))
    space = ParameterSpace.from_prior(("a", "b"), prior)
    torch.testing.assert_close(space.low, torch.tensor([-1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(space.high, torch.tensor([1.0, 4.0], dtype=torch.float64))
    s1 = space.sample(1000, generator=torch.Generator().manual_seed(2))
    s2 = space.sample(1000, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(s1, s2)
    assert bool(space.contains(s1).all())
    roundtrip = ParameterSpace.from_dict(space.to_dict())
    assert roundtrip.names == ("a", "b")
