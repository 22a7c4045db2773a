import pytest
import torch

from fedlrs.core import hard_threshold


def test_keeps_the_k_largest_magnitudes_per_row():
    v = torch.tensor([[3.0, -5.0, 1.0, 0.5], [0.1, 0.2, -0.3, 4.0]])
    out = hard_threshold(v, 2)
    assert torch.equal(out, torch.tensor([[3.0, -5.0, 0.0, 0.0], [0.0, 0.0, -0.3, 4.0]]))


def test_k_zero_and_k_at_least_d():
    v = torch.randn(3, 4)
    assert torch.count_nonzero(hard_threshold(v, 0)) == 0
    assert torch.equal(hard_threshold(v, 4), v)


def test_negative_k_is_refused():
    with pytest.raises(ValueError, match="k == -1"):
        hard_threshold(torch.zeros(2, 3), -1)
