"""A network task's knobs in a Flower run: the run config's ``nn-*`` keys as the loop's and the method's settings.

Selected by the run config's ``task`` (``"nn-digits"``, ``"nn-movielens"``, ``"nn-synthetic"``:
:data:`NETWORK_TASKS`); its keys are the run config's network section (:data:`NETWORK_DEFAULTS`). Node ``partition-id`` i is user i of
:func:`fedlrs.nn.tasks.load_task` ``(task, seed=data-seed, quick=nn-quick)``. No Flower here:
:mod:`fedlrs.federation_config` parses a network run's section with :func:`check_network_knobs`,
the device (:mod:`fedlrs.client.network`) and the server (:mod:`fedlrs.server.network`) build
the same method and loop config from it. ``config`` is a :class:`~fedlrs.federation_config.FederationConfig`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from fedlrs.nn.federated import PART, NetworkConfig, contribution_shapes, initial_state
from fedlrs.nn.lrs import LRSNetwork
from fedlrs.nn.method import FederatedMethod
from fedlrs.nn.network import flat_size
from fedlrs.nn.tasks import TASKS, Task, load_task
from fedlrs.privacy.settings import renamed_error

#: the network tasks a run config's ``task`` may name
NETWORK_TASKS = TASKS
__all__ = ["NETWORK_DEFAULTS", "NETWORK_TASKS", "PART", "check_network_knobs", "contribution_dimension", "network_config",
           "network_method", "network_setup", "network_shapes", "node_task"]

#: NetworkConfig field -> the run-config key it comes from
_NETWORK_KEYS = {"rounds": "num-server-rounds", "sample_rate": "sample-rate", "clip": "nn-clip", "clip_quantile": "clip-quantile", "private": "private",
                 "target_epsilon": "target-epsilon", "delta": "delta", "accountant": "accountant",
                 "noise_multiplier": "noise-multiplier", "noise_seed": "noise-seed", "seed": "seed", "dtype": "dtype"}
#: LRSNetwork argument -> the run-config key it comes from
_METHOD_KEYS = {"rank": "nn-rank", "sparsity": "nn-sparsity", "local_steps": "nn-local-steps", "lr_w": "nn-lr-w",
                "lr_b": "nn-lr-b", "server_lr": "nn-server-lr", "subspace_lr": "nn-subspace-lr"}
_LRS_DEFAULTS = {name: p.default for name, p in inspect.signature(LRSNetwork.__init__).parameters.items()}
#: the network section of the run config: its keys and defaults (those LRSNetwork and NetworkConfig have, taken from them)
NETWORK_DEFAULTS: dict[str, Any] = {
    "nn-quick": False,
    "nn-rank": 4,  # LRSNetwork has no default rank, sparsity or subspace step: the run config's
    "nn-sparsity": 10,
    **{_METHOD_KEYS[name]: _LRS_DEFAULTS[name] for name in ("local_steps", "lr_w", "lr_b", "server_lr")},
    "nn-subspace-lr": 0.1,
    "nn-clip": NetworkConfig.clip,
}



def network_config(config: Any) -> NetworkConfig:
    """The :class:`NetworkConfig` of a network run (errors name the run-config key)."""
    values = {name: getattr(config, key.replace("-", "_")) for name, key in _NETWORK_KEYS.items()}
    try:
        return NetworkConfig(**values)
    except ValueError as error:
        raise renamed_error(error, _NETWORK_KEYS) from error


def check_network_knobs(config: Any) -> NetworkConfig:
    """The loop settings of a network run (the run config's network section); refuse knobs that break a rule, or a run
    that asks for what it cannot do (errors in kebab-case)."""
    if config.task not in NETWORK_TASKS:
        raise ValueError(f"task == {config.task!r}, must be one of {list(NETWORK_TASKS)} for the network section.")
    network = network_config(config)
    if network.adaptive and config.secure_aggregation != "off":
        raise ValueError(f"secure-aggregation == {config.secure_aggregation!r} with task == {config.task!r}, private == true and clip-quantile == "
                         f"{config.clip_quantile}: SecAgg+ runs with a fixed clip bound only; set clip-quantile = 0 (and nn-clip), "
                         "or secure-aggregation = 'off'.")
    return network


@functools.lru_cache(maxsize=2)
def node_task(name: str, seed: int, quick: bool) -> Task:
    """The task, loaded once per process (every simulated node of the process shares it)."""
    return load_task(name, seed=seed, quick=quick)


def network_method(config: Any, task: Task) -> FederatedMethod:
    """LRS-NN on the task's network and loss with the run's ``nn-*`` knobs (errors name the run-config key)."""
    knobs = {name: getattr(config, key.replace("-", "_")) for name, key in _METHOD_KEYS.items()}
    try:
        return LRSNetwork(task.make_module, loss=task.loss, **knobs)
    except ValueError as error:
        raise renamed_error(error, _METHOD_KEYS) from error


@functools.lru_cache(maxsize=4)
def network_setup(config: Any) -> tuple[Task, FederatedMethod, NetworkConfig]:
    """The run's task (its data), method and loop config, built once per process."""
    task = node_task(config.task, config.data_seed, config.nn_quick)
    return task, network_method(config, task), network_config(config)


@functools.lru_cache(maxsize=4)
def network_shapes(config: Any) -> tuple[dict[str, torch.Size], dict[str, torch.Size]]:
    """``(shared shapes, contribution shapes)`` of the run's method, both in their order (no data needed)."""
    _, method, net = network_setup(config)
    shared = initial_state(method, net, torch.Generator().manual_seed(0))
    return {k: v.shape for k, v in shared.items()}, contribution_shapes(method, shared)


def contribution_dimension(config: Any) -> int:
    """D, the length of one user's flattened contribution (the one part sent, ``contribution``)."""
    return flat_size(network_shapes(config)[1])
