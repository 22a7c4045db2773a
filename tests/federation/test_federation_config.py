"""The typed run config: one table, parsed once, refused with a reason."""

import tomllib
from pathlib import Path

import pytest

from fedlrs.federation_config import DEFAULTS, ConfigError, FederationConfig, parse_run_config

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_pyproject_table_lists_every_knob_with_its_default():
    table = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert table == DEFAULTS


def test_round_trip_and_defaults():
    config = parse_run_config({})
    assert config == FederationConfig()
    assert parse_run_config(config.to_dict()) == config
    assert parse_run_config({"rank": 3}, {"rank": 4}).rank == 4  # overrides win


@pytest.mark.parametrize("values,match", [
    ({"rnak": 2}, "unknown run-config key 'rnak'"),
    ({"rank": 0}, "rank == 0"),
    ({"rank": 2.5}, "rank == 2.5, must be an integer"),
    ({"private": 1}, "private == 1, must be true or false"),
    ({"sample-rate": 0.0}, "sample-rate == 0.0"),
    ({"mode": "sgd"}, "mode == 'sgd'"),
    ({"sparsity": 20}, "sparsity == 20, must be < the dimension"),
    ({"clip-a": -1.0}, "clip-a == -1.0"),
    ({"delta": 1.0}, "delta == 1.0"),
    ({"dataset": "mnist"}, "dataset == 'mnist'"),
    ({"init-noise-multiplier": -1.0}, "init-noise-multiplier == -1.0"),
])
def test_bad_values_are_refused_naming_the_key(values, match):
    with pytest.raises(ConfigError, match=match):
        parse_run_config(values)


def test_engine_config_is_the_same_algorithm():
    engine = parse_run_config({"rank": 3, "num-server-rounds": 7, "mode": "gd"}).engine_config()
    assert (engine.rank, engine.rounds, engine.mode, engine.loss) == (3, 7, "gd", "squared")


def test_a_private_moments_init_may_be_calibrated_with_the_rounds():
    config = parse_run_config({"private": True, "init": "moments", "init-noise-multiplier": 0.0})
    assert config.engine_config().init_noise_multiplier == 0.0
