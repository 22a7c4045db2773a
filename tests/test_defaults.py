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
