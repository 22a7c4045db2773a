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


def test_the_table_is_common_settings_plus_one_section_per_task():
    """Every key is in exactly one section, the table in pyproject.toml lists them section by section."""
    from fedlrs.federation_config import COMMON_DEFAULTS, SECTIONS

    sections = [COMMON_DEFAULTS, *(s.defaults for s in SECTIONS.values())]
    assert sum(len(s) for s in sections) == len(DEFAULTS)
    assert set().union(*sections) == set(DEFAULTS)
    text = PYPROJECT.read_text()
    table = text[text.index("[tool.flwr.app.config]"):]
    positions = {name: table.index(f'# section "{name}"') for name in SECTIONS}
    for name, section in SECTIONS.items():
        later = [p for p in positions.values() if p > positions[name]]
        end = min(later) if later else len(table)
        for key in section.defaults:
            assert positions[name] < table.index(f"\n{key} = ") < end, f"{key} is not listed under its section {name!r}"


def test_each_task_section_starts_where_its_settings_class_starts():
    """One set of defaults: a section's keys default to its settings class's defaults (the few it lacks are the run config's own)."""
    import inspect
    from dataclasses import MISSING, fields

    from fedlrs.federation_config import COMMON_DEFAULTS, LINEAR_DEFAULTS
    from fedlrs.nn.federated import NetworkConfig
    from fedlrs.nn.lrs import LRSNetwork
    from fedlrs.nn.run_config import NETWORK_DEFAULTS
    from fedlrs.privacy.settings import PrivacySettings
    from fedlrs.recsys.flower_task import RECSYS_DEFAULTS
    from fedlrs.recsys.model import RecsysConfig
    from fedlrs.simulations.engine import EngineConfig

    def defaults(cls):
        return {f.name.replace("_", "-"): f.default for f in fields(cls) if f.default is not MISSING}

    engine, privacy, recsys = defaults(EngineConfig), defaults(PrivacySettings), defaults(RecsysConfig)
    assert all(LINEAR_DEFAULTS[k] == engine[k] for k in LINEAR_DEFAULTS if k in engine)
    assert {k for k in LINEAR_DEFAULTS if k not in engine} == {"rank", "sparsity", "dim", "dataset", "data-examples", "data-noise", "data-sparse-scale"}
    assert all(COMMON_DEFAULTS[k] == privacy[k] for k in privacy)
    assert COMMON_DEFAULTS["num-server-rounds"] == engine["rounds"] == recsys["rounds"] == defaults(NetworkConfig)["rounds"]
    assert all(RECSYS_DEFAULTS["recsys-" + k] == v for k, v in recsys.items() if "recsys-" + k in RECSYS_DEFAULTS)
    lrs = {n.replace("_", "-"): p.default for n, p in inspect.signature(LRSNetwork.__init__).parameters.items()}
    assert all(NETWORK_DEFAULTS["nn-" + k] == lrs[k] for k in ("local-steps", "lr-w", "lr-b", "server-lr"))
    assert NETWORK_DEFAULTS["nn-clip"] == defaults(NetworkConfig)["clip"]


@pytest.mark.parametrize("task,section,kind", [("linear", "linear", "EngineConfig"), ("nn-synthetic", "nn", "NetworkConfig"),
                                               ("recsys", "recsys", "RecsysFlowerTask")])
def test_a_run_parses_its_tasks_section_into_that_tasks_settings(task, section, kind):
    config = parse_run_config({"task": task})
    assert (config.task_section, type(config.task_settings).__name__) == (section, kind)
    assert config.section("common")["task"] == task
    assert set(config.section(section)) <= set(DEFAULTS)


def test_a_section_is_checked_by_its_tasks_rules_and_a_task_must_exist():
    with pytest.raises(ConfigError, match="recsys-rank == -1, must be an integer >= 0"):
        parse_run_config({"task": "recsys", "recsys-rank": -1})
    with pytest.raises(ConfigError, match="nn-clip == -1.0"):
        parse_run_config({"task": "nn-synthetic", "nn-clip": -1.0})
    with pytest.raises(ConfigError, match="task == 'nn-mnist', must be one of"):
        parse_run_config({"task": "nn-mnist"})
    with pytest.raises(ConfigError, match="delta == 2.0"):  # the common section, whatever the task
        parse_run_config({"task": "recsys", "delta": 2.0})
    # a key of another task's section is typed but not read by this run
    assert parse_run_config({"task": "nn-synthetic", "recsys-rank": -1}).task_section == "nn"
    with pytest.raises(ConfigError, match="recsys-rank == 1.5, must be an integer"):
        parse_run_config({"task": "nn-synthetic", "recsys-rank": 1.5})
