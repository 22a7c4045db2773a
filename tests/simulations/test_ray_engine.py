"""The engine sharded on a local Ray cluster of 2 worker processes (one Ray session for the module)."""

import pytest

from fedlrs.data import write_federation
from fedlrs.data.parquet import ParquetFederation
from fedlrs.privacy import Ledger
from fedlrs.simulations.engine import EngineConfig, run_engine
from fedlrs.simulations.ray_engine import RayFederation, ShardFailedError
from fedlrs.data.synthetic import make_lrs_data

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def private_config(**overrides):
    return EngineConfig(**{**dict(rank=2, sparsity=1, rounds=3, sample_rate=0.5, seed=5, private=True, target_epsilon=8.0, noise_seed=3,
                                  clip_a=50.0, clip_c=50.0, clip_moments=500.0), **overrides})


def releases(ledger):
    return [(e.release_id, e.noise_multiplier, e.sample_rate) for e in ledger.events]


@pytest.mark.slow
def test_two_workers_give_the_in_process_u_and_ledger(local_cluster, tmp_path):
    data = make_lrs_data(users=600, examples=8, dim=10, rank=2, sparsity=1, seed=1).train
    plain = EngineConfig(rank=2, sparsity=1, rounds=3, sample_rate=0.5, seed=5)
    with RayFederation(data, plain, workers=2, chunk_users=70) as shards:
        assert shards.shard_bounds == [(0, 300), (300, 600)]
        sharded = run_engine(shards, plain)
    memory = run_engine(data, plain)
    assert float((sharded.U - memory.U).abs().max()) < 1e-10
    assert float((sharded.fit.b - memory.fit.b).abs().max()) < 1e-8
    source = ParquetFederation(write_federation(data, tmp_path / "f.parquet", chunk_users=100, dtype="float64"))
    config = private_config()
    with RayFederation(source, config, workers=2) as shards:  # each actor streams its 3 row groups
        sharded = run_engine(shards, config)
    memory = run_engine(data, config)
    assert float((sharded.U - memory.U).abs().max()) < 1e-10
    assert releases(sharded.ledger) == releases(memory.ledger) and len(memory.ledger) == 4
    # the estimator and the CLI take the Ray backend with one option (on this running cluster)
    from typer.testing import CliRunner

    from fedlrs import LRSRegressor
    from fedlrs.cli import app

    model = LRSRegressor(rank=2, sparsity=1, rounds=3, random_state=5, ray_workers=2).fit(source)
    in_process = LRSRegressor(rank=2, sparsity=1, rounds=3, random_state=5).fit(source)
    assert abs(model.U_ - in_process.U_).max() < 1e-10 and model.B_.shape == (600, 10)
    cli = CliRunner().invoke(app, ["simulate", "--users", "300", "--dim", "10", "--rank", "2", "--sparsity", "1", "--rounds", "2", "--ray-workers", "2", "--out", str(tmp_path / "run")])
    assert cli.exit_code == 0, cli.output
    assert "Ray 2 workers" in cli.output and (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_adaptive_private_run_on_two_workers_equals_the_in_process_run(local_cluster, tmp_path):
    """Adaptive clipping on Ray: each shard answers its clip histogram and unit-free parts; same U and ledger (clip releases included)."""
    data = make_lrs_data(users=300, examples=8, dim=10, rank=2, sparsity=1, seed=1).train
    config = EngineConfig(rank=2, sparsity=1, rounds=3, mode="gd", sample_rate=0.5, seed=5, private=True, target_epsilon=8.0, noise_seed=3, clip_quantile=0.5)
    memory = run_engine(data, config)
    source = ParquetFederation(write_federation(data, tmp_path / "f.parquet", chunk_users=60, dtype="float64"))
    for shardable in (data, source):
        with RayFederation(shardable, config, workers=2, chunk_users=70) as shards:
            sharded = run_engine(shards, config)
        assert float((sharded.U - memory.U).abs().max()) < 1e-10
        assert [(e.release_id, e.kind, e.noise_multiplier) for e in sharded.ledger.events] == [(e.release_id, e.kind, e.noise_multiplier) for e in memory.ledger.events]
        assert [e.kind for e in sharded.ledger.events].count("clip") == 3


@pytest.mark.slow
def test_a_killed_worker_fails_the_round_unreleased_or_is_retried(local_cluster):
    data = make_lrs_data(users=400, examples=8, dim=10, rank=2, sparsity=1, seed=2).train
    config = private_config()
    whole = run_engine(data, config)

    def kill_after_round_1(shards):
        return lambda entry: ray.kill(shards.workers[0]) if entry["round"] == 1 else None

    ledger = Ledger()
    with RayFederation(data, config, workers=2) as shards:
        with pytest.raises(ShardFailedError, match="shard 0 .* nothing was released"):
            run_engine(shards, config, ledger=ledger, on_round=kill_after_round_1(shards))
    assert [e.release_id for e in ledger.events] == ["init", "round-1"]  # round 2 was never released
    with RayFederation(data, config, workers=2, retries=1) as shards:
        first = shards.workers[0]
        retried = run_engine(shards, config, on_round=kill_after_round_1(shards))
        assert shards.workers[0] is not first  # shard 0's actor was restarted
    assert float((retried.U - whole.U).abs().max()) < 1e-10
    assert releases(retried.ledger) == releases(whole.ledger)


def test_bad_ray_arguments_are_refused():
    data = make_lrs_data(users=4, examples=3, dim=5, rank=1, sparsity=0).train
    config = EngineConfig(rank=1, sparsity=0)
    with pytest.raises(ValueError, match="workers == 0"):
        RayFederation(data, config, workers=0)
    with pytest.raises(ValueError, match="retries == -1"):
        RayFederation(data, config, retries=-1)
    with pytest.raises(ValueError, match="another configuration"):
        run_engine(type("Fake", (), {"round_sums": None, "config": config})(), EngineConfig(rank=1, sparsity=0, rounds=2))
