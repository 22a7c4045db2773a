import json

import pytest
import torch
from typer.testing import CliRunner

from fedlrs.cli import app
from fedlrs.core import principal_angle_distance
from fedlrs.data import ParquetFederation, true_subspace, write_federation
from fedlrs.simulations.engine import EngineConfig, run_engine
from fedlrs.data.synthetic import make_lrs_data


def test_write_and_read_back_every_user_with_its_mask(tmp_path):
    data = make_lrs_data(users=23, examples=3, examples_max=6, dim=5, rank=2, sparsity=1, seed=0).train
    data.mask[4, 0] = False  # a hole: the mask is stored, not implied by the count
    source = ParquetFederation(write_federation(data, tmp_path / "f.parquet", chunk_users=10, dtype="float64"))
    assert source.bounds == [(0, 10), (10, 20), (20, 23)] and source.num_users == 23 and source.dim == 5
    back = source.load()
    torch.testing.assert_close(back.X, data.X)
    torch.testing.assert_close(back.y, data.y)
    assert torch.equal(back.mask, data.mask) and torch.equal(source.counts().long(), data.counts)
    assert source.read(2, torch.float32).X.dtype == torch.float32


def test_bad_files_are_refused_with_the_reason(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pytest.raises(ValueError, match="does not exist"):
        ParquetFederation(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a fedlrs federation"):
        ParquetFederation(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="chunk_users == 0"):
        write_federation(make_lrs_data(users=2, examples=2, dim=3, rank=1, sparsity=0).train, tmp_path / "x.parquet", chunk_users=0)


@pytest.mark.parametrize("private", [False, True])
def test_streamed_run_equals_the_in_memory_run(tmp_path, private):
    """Row groups of 9 users read each round give the in-memory engine's U (float64) and ledger."""
    data = make_lrs_data(users=100, examples=6, dim=10, rank=2, sparsity=1, seed=1).train
    source = ParquetFederation(write_federation(data, tmp_path / "f.parquet", chunk_users=9, dtype="float64"))
    knobs = dict(private=True, target_epsilon=8.0, noise_seed=3, clip_a=50.0, clip_c=50.0, clip_moments=500.0) if private else {}
    config = EngineConfig(rank=2, sparsity=1, rounds=3, sample_rate=0.4, seed=5, **knobs)
    memory, streamed = run_engine(data, config), run_engine(source, config)
    assert float((memory.U - streamed.U).abs().max()) < 1e-10
    assert float((memory.fit.b - streamed.fit.b).abs().max()) < 1e-8
    if private:
        assert [(e.release_id, e.noise_multiplier, e.sample_rate) for e in memory.ledger.events] == [
            (e.release_id, e.noise_multiplier, e.sample_rate) for e in streamed.ledger.events
        ]
        assert len(streamed.ledger.events) == 4


def adaptive_config(**overrides):
    """A private run with adaptive clipping: gd, the unit-free step, a clip histogram released every round."""
    return EngineConfig(**{**dict(rank=2, sparsity=1, rounds=3, mode="gd", sample_rate=0.4, seed=5, private=True, target_epsilon=8.0, noise_seed=3, clip_quantile=0.5), **overrides})


def ledger_entries(ledger):
    return [(e.release_id, e.kind, e.noise_multiplier, e.sample_rate) for e in ledger.events]


@pytest.mark.parametrize("sample_rate", [0.4, 1.0])
def test_adaptive_private_run_streamed_equals_the_in_memory_run(tmp_path, sample_rate):
    """Adaptive clipping chunk by chunk: the clip histograms, the unit-free parts and the M_i / ||M_i||_F init
    summed over row groups of 9 users give the in-memory U (float64) and the same ledger, clip releases included."""
    data = make_lrs_data(users=100, examples=6, dim=10, rank=2, sparsity=1, seed=1).train
    source = ParquetFederation(write_federation(data, tmp_path / "f.parquet", chunk_users=9, dtype="float64"))
    config = adaptive_config(sample_rate=sample_rate)
    assert config.adaptive
    memory, streamed = run_engine(data, config), run_engine(source, config)
    assert float((memory.U - streamed.U).abs().max()) < 1e-10
    assert memory.clip_bounds == streamed.clip_bounds and len(memory.clip_bounds) == 3
    assert ledger_entries(memory.ledger) == ledger_entries(streamed.ledger)
    assert [e.kind for e in streamed.ledger.events] == ["init", "clip", "round", "clip", "round", "clip", "round"]


def test_data_synth_cli_writes_a_federation_the_engine_learns_from(tmp_path):
    out = tmp_path / "fed"
    args = ["data", "synth", "--users", "1500", "--out", str(out), "--dim", "20", "--rank", "2", "--sparsity", "1", "--chunk-users", "400", "--test-examples", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    source = ParquetFederation(out)
    assert source.bounds[-1] == (1200, 1500) and source.m_max == 25 and ParquetFederation(out / "test.parquet").m_max == 2
    assert json.loads((out / "federation.json").read_text())["users"] == 1500
    run = run_engine(source, EngineConfig(rank=2, sparsity=1, rounds=5, dtype="float32"), keep_fit=False)
    assert run.fit is None
    assert float(principal_angle_distance(run.U.double(), true_subspace(out))) < 0.05
    again = tmp_path / "again"
    CliRunner().invoke(app, args[:5] + [str(again)] + args[6:])
    torch.testing.assert_close(ParquetFederation(again).read(3).X, source.read(3).X)  # same seed, same users
    bad = CliRunner().invoke(app, ["data", "synth", "--users", "0", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "users == 0" in bad.output


def test_simulate_and_the_estimator_accept_a_federation_on_disk(tmp_path):
    from fedlrs import LRSRegressor

    out = tmp_path / "fed"
    assert CliRunner().invoke(app, ["data", "synth", "--users", "800", "--out", str(out), "--dim", "12", "--rank", "2", "--sparsity", "1", "--chunk-users", "300"]).exit_code == 0
    result = CliRunner().invoke(app, ["simulate", "--data", str(out), "--rank", "2", "--sparsity", "1", "--rounds", "4", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["history"]) == 5 and metrics["final"]["distance"] < 0.05
    assert metrics["config"]["dtype"] == ParquetFederation(out).dtype == "float32"  # at scale: the stored precision by default
    assert metrics["data"] == {"data_dir": str(out), "users": 800, "dim": 12}  # the federation on disk, not the drawing options
    model = LRSRegressor(rank=2, sparsity=1, rounds=4).fit(ParquetFederation(out))
    assert model.W_.shape == (800, 2) and list(model.groups_[:3]) == [0, 1, 2]
    assert float(principal_angle_distance(torch.as_tensor(model.U_), true_subspace(out))) < 0.05
    with pytest.raises(ValueError, match="give y=None and groups=None"):
        LRSRegressor(rank=2, sparsity=1).fit(ParquetFederation(out), [1.0], None)


def test_data_real_writes_a_real_data_set_the_engine_runs_on(tmp_path):
    from fedlrs.data.realdata import load_hsb

    result = CliRunner().invoke(app, ["data", "real", "hsb", "--out", str(tmp_path / "hsb"), "--chunk-users", "50"])
    assert result.exit_code == 0, result.output
    source, fed = ParquetFederation(tmp_path / "hsb"), load_hsb()
    assert source.num_users == 160 and source.bounds[-1] == (150, 160)
    torch.testing.assert_close(source.load().X, fed.train_full.X)
    config = EngineConfig(rank=2, sparsity=1, rounds=3)
    assert float((run_engine(source, config).U - run_engine(fed.train_full, config).U).abs().max()) < 1e-10
    with pytest.raises(ValueError, match="no true subspace"):
        true_subspace(tmp_path / "hsb")
    assert CliRunner().invoke(app, ["data", "real", "mnist", "--out", str(tmp_path / "x")]).exit_code == 2
