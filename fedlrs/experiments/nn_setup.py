"""The network experiments' setup: their configs, methods and loop settings, and the per-user test metric.

Used by :mod:`fedlrs.experiments.nn` (``fedlrs experiment nn-digits`` / ``nn-movielens``), which says
what the experiments run and report.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import torch

from fedlrs.privacy import calibrate_noise_multiplier
from fedlrs.experiments.config import read_experiment
from fedlrs.experiments.linear import INF

from fedlrs.nn.baselines import FedAvg, FedRep
from fedlrs.nn.federated import NetworkConfig
from fedlrs.nn.lrs import LRSNetwork
from fedlrs.nn.method import FederatedMethod, State, UserExamples
from fedlrs.nn.tasks import Task

NAMES = ("nn-digits", "nn-movielens")
#: methods trained by the federated loop, and their constructors
TRAINED = {"lrs": LRSNetwork, "fedavg": FedAvg, "fedrep": FedRep}
LABELS = {"lrs": "LRS-NN", "fedavg": "FedAvg", "fedavg+ft": "FedAvg+FT", "fedrep": "FedRep", "local": "local only"}
SECTIONS = ("task", "loop", "methods", "finetune", "local", "private")


# ---------------------------------------------------------------- configuration


def load_nn_experiment(name: str, *, quick: bool = False, directory: Path | None = None) -> dict:
    """The config ``experiments/NAME.toml`` (``kind = "nn"``) with ``[quick]`` merged in when ``quick``; checked once."""
    config, path = read_experiment(name, kinds=("nn",), quick=quick, directory=directory, unknown_hint=f"; network experiments: {list(NAMES)}")
    missing = [s for s in SECTIONS if not isinstance(config.get(s), dict)]
    if missing:
        raise ValueError(f"{path}: section(s) {missing} missing; a network experiment needs {list(SECTIONS)}.")
    unknown = sorted(set(config["methods"]) - set(TRAINED))
    if unknown:
        raise ValueError(f"{path}: [methods] has {unknown}, must be among {sorted(TRAINED)}.")
    config.setdefault("name", name)
    return config


def make_method(key: str, task: Task, params: dict) -> FederatedMethod:
    """``TRAINED[key](task.make_module, loss=task.loss, **params)``; a wrong knob is a ValueError naming the section."""
    try:
        return TRAINED[key](task.make_module, loss=task.loss, **params)
    except TypeError as error:
        raise ValueError(f"[methods.{key}]: {error}") from error


@functools.lru_cache(maxsize=None)
def round_noise_multiplier(epsilon: float, delta: float, sample_rate: float, rounds: int) -> float:
    """The calibrated round z for ``rounds`` Poisson-sampled rounds at (epsilon, delta) (RDP), computed once per setting."""
    return calibrate_noise_multiplier(target_epsilon=epsilon, delta=delta, sample_rate=sample_rate, rounds=rounds)


def loop_config(config: dict, seed: int, *, epsilon: float = INF, delta: float = 1e-5, clip: float = 1.0, **extra) -> NetworkConfig:
    """The loop's :class:`NetworkConfig` from ``[loop]``: private when ``epsilon`` is finite (noise seeded by ``seed``),
    with the round noise multiplier of :func:`round_noise_multiplier` (the loop's own calibration, done once)."""
    private = math.isfinite(epsilon)
    try:
        config = NetworkConfig(**config["loop"], seed=seed, noise_seed=seed, private=private, target_epsilon=epsilon if private else 1.0, delta=delta, clip=clip, **extra)
    except TypeError as error:
        raise ValueError(f"[loop]: {error}") from error
    if not private:
        return config
    return dataclasses.replace(config, noise_multiplier=round_noise_multiplier(epsilon, delta, config.sample_rate, config.rounds))


# ---------------------------------------------------------------- metrics


def user_metric(outputs: torch.Tensor, data: UserExamples, loss: str) -> float:
    """Mean per-user test metric over users with examples: accuracy ``mean_i (1/m_i) sum_j 1[argmax o_ij = y_ij]``
    (``loss == "cross_entropy"``) or RMSE ``mean_i sqrt((1/m_i) sum_j (o_ij - y_ij)^2)`` (``"mse"``)."""
    weights = data.mask.to(torch.float64)
    counts = weights.sum(dim=1)
    if loss == "cross_entropy":
        per_example = (outputs.argmax(dim=-1) == data.y).to(torch.float64)
    else:
        per_example = (outputs.reshape(data.y.shape).to(torch.float64) - data.y.to(torch.float64)) ** 2
    per_user = (per_example * weights).sum(dim=1) / counts.clamp_min(1)
    if loss != "cross_entropy":
        per_user = per_user.sqrt()
    return float(per_user[counts > 0].mean())


def error(value: float, loss: str) -> float:
    """What tuning minimises: ``1 - accuracy`` or the RMSE."""
    return 1.0 - value if loss == "cross_entropy" else value


def state_size(state: State) -> int:
    """Numbers in a shared state: ``sum_k numel(state_k)``."""
    return sum(v.numel() for v in state.values())
