import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from fedlrs.privacy.clipping import clip, clip_scales, flat_norms, ls_part_norms, ls_part_scales


def test_clip_scales_formula_and_zero_norm():
    norms = torch.tensor([0.0, 0.5, 1.0, 4.0], dtype=torch.float64)
    assert clip_scales(norms, bound=1.0).tolist() == [1.0, 1.0, 1.0, 0.25]


@pytest.mark.parametrize("bound", [0.0, -1.0, float("inf"), float("nan")])
def test_bound_validated(bound):
    with pytest.raises(ValueError, match="bound == "):
        clip_scales(torch.ones(2), bound=bound)


def test_flat_norms_over_trailing_dims():
    t = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    assert torch.allclose(flat_norms(t), torch.stack([t[0].norm(), t[1].norm()]))


@settings(max_examples=300, deadline=None)
@given(hnp.arrays("float64", st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 4)),
                  elements=st.floats(-1e6, 1e6)),
       st.floats(1e-3, 1e3), st.sampled_from([torch.float32, torch.float64]))
def test_clipped_contribution_never_exceeds_bound(array, bound, dtype):
    t = torch.from_numpy(array).to(dtype)
    clipped, scales = clip(t, bound=bound)
    rel = 1e-5 if dtype == torch.float32 else 1e-12  # rounding of the norm itself
    assert torch.all(flat_norms(clipped).double() <= bound * (1 + rel))
    assert torch.all((scales > 0) & (scales <= 1))
    inside = flat_norms(t) <= bound
    assert torch.equal(clipped[inside], t[inside])


def _explicit_parts(W, X, y, b):
    S = X.T @ X
    g = X.T @ (y - X @ b)
    A = torch.kron(torch.outer(W, W), S)
    c = torch.outer(g, W).T.reshape(-1)
    return S, g, A, c


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_ls_part_norms_match_explicit_kron(n, r, d, seed):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, r, generator=gen, dtype=torch.float64)
    X = torch.randn(n, 7, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 7, generator=gen, dtype=torch.float64)
    B = torch.randn(n, d, generator=gen, dtype=torch.float64)
    parts = [_explicit_parts(W[i], X[i], y[i], B[i]) for i in range(n)]
    xtx = torch.stack([p[0] for p in parts])
    g = torch.stack([p[1] for p in parts])
    norm_A, norm_c = ls_part_norms(W, xtx, g)
    assert torch.allclose(norm_A, torch.stack([p[2].norm() for p in parts]), rtol=1e-10)
    assert torch.allclose(norm_c, torch.stack([p[3].norm() for p in parts]), rtol=1e-10)
    s_A, s_c = ls_part_scales(W, xtx, g, bound_A=1.0, bound_c=0.5)
    for i, p in enumerate(parts):
        assert (s_A[i] * p[2]).norm() <= 1.0 * (1 + 1e-12)
        assert (s_c[i] * p[3]).norm() <= 0.5 * (1 + 1e-12)


def test_ls_part_norms_shape_checked():
    with pytest.raises(ValueError, match="must be \\(n, r\\), \\(n, d, d\\), \\(n, d\\)"):
        ls_part_norms(torch.ones(2, 3), torch.ones(2, 4, 4), torch.ones(2, 5))
