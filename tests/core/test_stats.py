import numpy as np
import pytest
import torch

from fedlrs.core import UserData, pad_by_group, sufficient_statistics


def test_pad_by_group_keeps_rows_in_order_and_masks_padding():
    X = np.arange(12, dtype=float).reshape(6, 2)
    y = np.arange(6, dtype=float)
    groups = np.array([1, 0, 1, 2, 1, 0])
    data = pad_by_group(X, y, groups, 3)
    assert data.X.shape == (3, 3, 2)
    assert data.counts.tolist() == [2, 3, 1]
    assert data.y[1, :3].tolist() == [0.0, 2.0, 4.0]
    assert data.y[0, :2].tolist() == [1.0, 5.0]
    assert not data.mask[2, 1:].any()


def test_statistics_ignore_padded_rows():
    X = torch.randn(2, 4, 3, dtype=torch.float64)
    y = torch.randn(2, 4, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    stats = sufficient_statistics(UserData(X, y, mask))
    X0, y0 = X[0, :2], y[0, :2]
    torch.testing.assert_close(stats.xtx[0], X0.T @ X0)
    torch.testing.assert_close(stats.xty[0], X0.T @ y0)
    torch.testing.assert_close(stats.yty[0], y0 @ y0)
    assert stats.count.tolist() == [2.0, 4.0]


def test_user_data_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="y has shape"):
        UserData(torch.zeros(2, 3, 4), torch.zeros(2, 4), torch.ones(2, 3, dtype=torch.bool))
