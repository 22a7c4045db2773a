import math

import pytest
import torch

from fedlrs.privacy.sampling import poisson_sample


def test_rate_and_independence():
    gen = torch.Generator().manual_seed(0)
    masks = torch.stack([poisson_sample(1000, sample_rate=0.05, generator=gen) for _ in range(200)])
    assert masks.dtype == torch.bool and masks.shape == (200, 1000)
    rate = masks.double().mean().item()
    assert abs(rate - 0.05) < 4 * math.sqrt(0.05 * 0.95 / masks.numel())
    counts = masks.sum(dim=1).double()  # Binomial(1000, 0.05): variance 47.5, not fixed size
    assert 30 < counts.var().item() < 70


def test_reproducible_with_generator_and_full_rate():
    a = poisson_sample(50, sample_rate=0.3, generator=torch.Generator().manual_seed(3))
    b = poisson_sample(50, sample_rate=0.3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert poisson_sample(10, sample_rate=1.0).all()


@pytest.mark.parametrize("rate", [0.0, 1.5, -0.1])
def test_rate_validated(rate):
    with pytest.raises(ValueError, match=rf"sample_rate == {rate}, must be in \(0, 1\]\."):
        poisson_sample(10, sample_rate=rate)
