from fedlrs.simulations.compare import compare_methods
from fedlrs.simulations.engine import EngineConfig
from fedlrs.data.synthetic import make_lrs_data


def test_lrs_beats_every_baseline_on_lrs_data():
    data = make_lrs_data(users=600, examples=25, dim=20, rank=3, sparsity=2, noise=0.01, seed=0)
    rows = {row["method"]: row for row in compare_methods(data, EngineConfig(rank=3, sparsity=2, rounds=10))}
    assert set(rows) == {"lrs", "low-rank only", "sparse only", "local only", "global", "oracle (U* known)"}
    for method in ("low-rank only", "sparse only", "local only", "global"):
        assert rows["lrs"]["relative_error"] < rows[method]["relative_error"], method
        assert rows["lrs"]["test_mse"] < rows[method]["test_mse"], method
    assert rows["lrs"]["storage"] == 3 + 2 * 2 and rows["local only"]["storage"] == 20
