"""One set of defaults: the estimators, the CLI, the engine and the Flower run config agree on every shared knob."""

import inspect
import tomllib
from dataclasses import fields
from pathlib import Path

import typer

from fedlrs.cli import simulate
from fedlrs.estimators import LRSRegressor
from fedlrs.federation_config import DEFAULTS
from fedlrs.simulations.engine import EngineConfig

KNOBS = ("init_noise_multiplier", "clip_quantile", "clip_a", "clip_c", "clip_g", "clip_moments", "ridge_w", "ridge_b", "ridge_u",
         "gd_learning_rate", "accountant", "init", "sample_rate")


def _engine_defaults() -> dict:
    return {f.name: f.default for f in fields(EngineConfig)}


def _cli_defaults() -> dict:
    out = {}
    for name, parameter in inspect.signature(simulate).parameters.items():
        default = parameter.default
        out[name] = default.default if isinstance(default, typer.models.OptionInfo) else default
    return out


def test_estimator_cli_engine_and_flower_share_their_defaults():
    engine, estimator, cli = _engine_defaults(), inspect.signature(LRSRegressor.__init__).parameters, _cli_defaults()
    table = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    for knob in KNOBS:
        kebab = knob.replace("_", "-")
        assert estimator[knob].default == engine[knob], f"LRSRegressor {knob} == {estimator[knob].default}, engine {engine[knob]}"
        assert DEFAULTS[kebab] == engine[knob], f"run config {kebab} == {DEFAULTS[kebab]}, engine {engine[knob]}"
        assert table[kebab] == engine[knob], f"pyproject {kebab} == {table[kebab]}, engine {engine[knob]}"
        if knob in cli:
            assert cli[knob] == engine[knob], f"CLI --{kebab} == {cli[knob]}, engine {engine[knob]}"
    assert {"clip_quantile", "clip_g", "clip_moments", "init_noise_multiplier"} <= set(cli)


#: where an entry point's default differs from the engine's on purpose, and why (anything else must agree)
DOCUMENTED_DIFFERENCES = {
    ("estimator", "rank"): "the engine has no default: the estimators start at 2, a small model that always runs",
    ("estimator", "sparsity"): "the engine has no default: the estimators start at 0 (no personal exceptions)",
    ("estimator", "mode"): "'auto': 'gd' when private, else 'ls' (stated in the estimators' Parameters)",
    ("estimator", "delta"): "None: (epsilon, delta) are given together or not at all",
    ("classifier", "ridge_w"): "the logistic loss needs a ridge for a finite minimiser on separable users",
    ("classifier", "ridge_b"): "the logistic loss needs a ridge for a finite minimiser on separable users",
    ("cli", "rank"): "fedlrs simulate draws its synthetic users with this rank and fits the same",
    ("cli", "sparsity"): "fedlrs simulate draws its synthetic users with this sparsity and fits the same",
    ("cli", "mode"): "None: 'gd' when private or logistic, else 'ls', as the estimators' 'auto'",
    ("cli", "dtype"): "None: the stored precision of a federation on disk, float64 otherwise",
    ("run config", "rank"): "the engine has no default: the built-in demo federation has rank 2",
    ("run config", "sparsity"): "the engine has no default: the built-in demo federation has sparsity 2",
}


def _entry_point_defaults() -> dict[str, dict]:
    from fedlrs.estimators import LRSClassifier

    def signature(cls) -> dict:
        return {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}

    run_config = {k.replace("-", "_"): v for k, v in DEFAULTS.items()}
    run_config["rounds"] = run_config.pop("num_server_rounds")
    return {"estimator": signature(LRSRegressor), "classifier": signature(LRSClassifier), "cli": _cli_defaults(), "run config": run_config}


def test_every_shared_knob_has_one_default_or_a_documented_reason():
    """Every EngineConfig field that an entry point also offers has the engine's default, unless DOCUMENTED_DIFFERENCES says why not."""
    engine = _engine_defaults()
    checked = 0
    for where, defaults in _entry_point_defaults().items():
        for knob, default in defaults.items():
            if knob not in engine:
                continue
            checked += 1
            reasons = [(w, knob) for w in (where, "estimator" if where == "classifier" else where)]
            if any(key in DOCUMENTED_DIFFERENCES for key in reasons):
                assert default != engine[knob], f"{where} {knob} now equals the engine's; drop its entry from DOCUMENTED_DIFFERENCES"
                continue
            assert default == engine[knob], f"{where} {knob} == {default!r}, engine {engine[knob]!r}; make them agree or document why"
    assert checked >= 50


def test_the_network_loop_shares_the_run_configs_defaults():
    """NetworkConfig (the in-process network loop) and the run config's nn-* keys start from the same values."""
    from fedlrs.nn.federated import NetworkConfig

    network = {f.name: f.default for f in fields(NetworkConfig)}
    run_config = _entry_point_defaults()["run config"]
    assert network["clip"] == run_config["nn_clip"]
    for knob in ("rounds", "sample_rate", "target_epsilon", "delta", "accountant", "noise_multiplier", "noise_seed", "private"):
        assert network[knob] == run_config[knob] == _engine_defaults()[knob], knob
    if "clip_quantile" in network:
        assert network["clip_quantile"] == run_config["clip_quantile"]


def test_every_loop_config_shares_the_common_run_settings():
    """EngineConfig, NetworkConfig, RecsysConfig and FedAvgConfig are RunSettings: one definition and one rule of rounds, q, seed, privacy."""
    import pytest

    from fedlrs.nn.federated import NetworkConfig
    from fedlrs.privacy.settings import RunSettings
    from fedlrs.recsys.model import RecsysConfig
    from fedlrs.simulations.private_baselines import FedAvgConfig

    makers = {EngineConfig: lambda **kw: EngineConfig(rank=2, sparsity=0, **kw), NetworkConfig: NetworkConfig, RecsysConfig: RecsysConfig,
              FedAvgConfig: FedAvgConfig}
    for cls, make in makers.items():
        assert issubclass(cls, RunSettings)
        for name in ("sample_rate", "seed", "private", "target_epsilon", "delta", "accountant", "noise_multiplier", "noise_seed"):
            assert getattr(make(), name) == getattr(RunSettings(), name), (cls.__name__, name)
        with pytest.raises(ValueError, match=r"sample_rate == 1.5, must be in \(0, 1\]"):
            make(sample_rate=1.5)
        with pytest.raises(ValueError, match="seed == 0.5, must be an integer"):
            make(seed=0.5)
    assert DEFAULTS["num-server-rounds"] == RunSettings().rounds and DEFAULTS["sample-rate"] == RunSettings().sample_rate
