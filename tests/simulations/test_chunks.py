import pytest
import torch

from fedlrs.core import LeanUsers, sufficient_statistics
from fedlrs.simulations.chunks import Federation, add_sums, chunk_bounds, split_index
from fedlrs.tasks.linear import released_parts
from fedlrs.simulations.engine import EngineConfig, run_engine
from fedlrs.data.synthetic import make_lrs_data


def test_lean_users_keep_the_smaller_of_examples_and_statistics():
    few = make_lrs_data(users=6, examples=4, dim=8, rank=2, sparsity=1, seed=0).train
    many = make_lrs_data(users=6, examples=12, dim=8, rank=2, sparsity=1, seed=0).train
    lean_few, lean_many = LeanUsers.from_data(few), LeanUsers.from_data(many)
    assert lean_few.stats is None and lean_few.data is few  # 4 x 8 examples < 8 x 8 statistics
    assert lean_many.data is None and lean_many.stats.xtx.shape == (6, 8, 8)
    torch.testing.assert_close(lean_few.statistics().xtx, sufficient_statistics(few).xtx)
    torch.testing.assert_close(lean_many.select(torch.tensor([1, 4])).statistics().xty, sufficient_statistics(many).xty[[1, 4]])
    assert LeanUsers.from_data(many, keep_examples=True).data is many


def test_split_index_gives_positions_inside_each_chunk():
    bounds = chunk_bounds(10, 4)
    assert bounds == [(0, 4), (4, 8), (8, 10)]
    parts = [(j, local.tolist()) for j, local in split_index(torch.tensor([1, 3, 8, 9]), bounds)]
    assert parts == [(0, [1, 3]), (2, [0, 1])]  # chunk 1 has nobody sampled
    with pytest.raises(ValueError, match="chunk_users == 0"):
        chunk_bounds(10, 0)
    with pytest.raises(ValueError, match="must name"):
        add_sums({"A": torch.zeros(1)}, {"G": torch.zeros(1)})


@pytest.mark.parametrize("examples, mode, quantile", [(6, "ls", 0.5), (20, "ls", 0.5), (6, "gd", 0.0), (6, "gd", 0.5), (20, "gd", 0.5)])
def test_chunked_round_sums_equal_one_batch(examples, mode, quantile):
    """Sums over chunks of 7 users (examples kept: m < d; statistics kept: m >= d) equal those of one chunk
    (with adaptive clipping, gd at quantile 0.5: the clip histogram, the unit-free parts G and P, the scaled moments too)."""
    data = make_lrs_data(users=50, examples=examples, dim=10, rank=2, sparsity=1, seed=1).train
    config = EngineConfig(rank=2, sparsity=1, mode=mode, private=True, target_epsilon=2.0, noise_seed=0, clip_a=5.0, clip_c=5.0, clip_g=0.5, clip_quantile=quantile)
    whole, chunked = Federation(data, config, chunk_users=100), Federation(data, config, chunk_users=7)
    assert len(chunked.bounds) == 8 and chunked.source is None  # in memory: the kept chunks only
    assert (chunked._kept[0].stats is None) == (examples < 10)
    U = torch.linalg.qr(torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    index = torch.tensor([0, 3, 7, 8, 20, 21, 22, 49])
    bound = 0.3 if config.unit_free else None
    for idx in (None, index):
        a, b = whole.round_sums(U, idx, bound=bound), chunked.round_sums(U, idx, bound=bound)
        assert a.keys() == b.keys() and float(b["users"]) == (50 if idx is None else 8)
        assert set(a) == {*released_parts(config), "users"}
        if config.unit_free:
            assert set(a) == {"G", "P", "users"}
            ha, hb = whole.clip_sums(U, idx), chunked.clip_sums(U, idx)
            assert float(hb["H"].sum()) == float(hb["users"]) == (50 if idx is None else 8)  # one bin per user
            a, b = {**a, "H": ha["H"]}, {**b, "H": hb["H"]}
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(whole.moments()["M"], chunked.moments()["M"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(whole.local_fit(U, index).b, chunked.local_fit(U, index).b)


def test_float32_engine_stays_close_to_float64():
    data = make_lrs_data(users=2000, examples=25, dim=20, rank=3, sparsity=2, seed=2)
    runs = {dtype: run_engine(data.train, EngineConfig(rank=3, sparsity=2, rounds=5, dtype=dtype)) for dtype in ("float64", "float32")}
    U64, U32 = runs["float64"].U, runs["float32"].U.double()
    assert float(torch.linalg.matrix_norm(U64 @ U64.T - U32 @ U32.T, ord=2)) < 1e-5
    assert float((runs["float64"].theta - runs["float32"].theta.double()).abs().max()) < 1e-5


@pytest.mark.parametrize("mode, quantile", [("ls", 0.5), ("gd", 0.0), ("gd", 0.5)])
def test_a_round_with_nobody_sampled_sums_to_zero(mode, quantile):
    data = make_lrs_data(users=20, examples=6, dim=8, rank=2, sparsity=1, seed=3).train
    federation = Federation(data, EngineConfig(rank=2, sparsity=1, mode=mode, clip_quantile=quantile), chunk_users=7)
    U = torch.linalg.qr(torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))[0]
    nobody = torch.tensor([], dtype=torch.long)
    sums = federation.round_sums(U, nobody, bound=1.0)
    if federation.config.unit_free:
        sums = {**sums, "H": federation.clip_sums(U, nobody)["H"]}
    assert float(sums["users"]) == 0 and all(float(v.abs().sum()) == 0 for v in sums.values())
    assert set(sums) == {"ls": {"A", "c", "users"}, 0.0: {"G", "users"}, 0.5: {"G", "P", "H", "users"}}[mode if mode == "ls" else quantile]
