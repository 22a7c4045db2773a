import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from fedlrs.core import UserData, mean_relative_error, per_user_auc, principal_angle_distance, random_orthonormal, support_f1


def test_principal_angle_distance_zero_for_same_span_one_for_orthogonal():
    U = random_orthonormal(6, 2, generator=torch.Generator().manual_seed(0))
    rotated = U @ torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=U.dtype)
    assert principal_angle_distance(rotated, U) < 1e-12
    E = torch.eye(6, dtype=torch.float64)
    assert abs(principal_angle_distance(E[:, :2], E[:, 2:4]) - 1.0) < 1e-12


def test_relative_error_and_support_f1():
    theta_star = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    assert abs(mean_relative_error(theta_star * 1.1, theta_star) - 0.01) < 1e-12
    B_star = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    B = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert abs(support_f1(B, B_star) - 2 * 1 / (2 * 1 + 1 + 1)) < 1e-12


def test_per_user_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(3, 12)).astype(float)
    scores = rng.normal(size=(3, 12)).round(1)
    data = UserData(torch.zeros(3, 12, 1), torch.as_tensor(y), torch.ones(3, 12, dtype=torch.bool))
    auc = per_user_auc(data, torch.as_tensor(scores))
    for i in range(3):
        assert abs(float(auc[i]) - roc_auc_score(y[i], scores[i])) < 1e-12
