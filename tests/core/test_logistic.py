import torch

from fedlrs.core import UserData, solve_local_logistic, user_parameters

f64 = torch.float64


def test_irls_reaches_the_penalized_logistic_optimum():
    gen = torch.Generator().manual_seed(0)
    n, m, d = 4, 200, 3
    X = torch.randn(n, m, d, generator=gen, dtype=f64)
    theta_true = torch.randn(n, d, generator=gen, dtype=f64)
    y = (torch.rand(n, m, generator=gen, dtype=f64) < torch.sigmoid((X @ theta_true.unsqueeze(-1)).squeeze(-1))).to(f64)
    data = UserData(X, y, torch.ones(n, m, dtype=torch.bool))
    U = torch.eye(d, dtype=f64)
    ridge = 0.5
    fit = solve_local_logistic(U, data, sparsity=0, ridge_w=ridge, iterations=15)
    theta = user_parameters(U, fit)
    p = torch.sigmoid((X @ theta.unsqueeze(-1)).squeeze(-1))
    unit = X.square().sum(dim=(1, 2)) / (d * m)  # the ridge is in units of tr(X_i^T X_i) / (d m_i)
    gradient = (X.transpose(1, 2) @ (p - y).unsqueeze(-1)).squeeze(-1) + ridge * unit.unsqueeze(-1) * theta
    assert float(gradient.abs().max()) < 1e-8
