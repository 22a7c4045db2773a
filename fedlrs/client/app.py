"""The Flower ClientApp of fedlrs: a thin adapter, Message in, ``fedlrs.core`` call, Message out.

Message types it answers (the server sends them, :mod:`fedlrs.server.billboard`; keys in :mod:`fedlrs.protocol.messages`):

* ``train`` : content ``billboard`` (ArrayRecord ``U``) and ``round-config`` (``round``).
  Fits ``w_i, b_i`` for ``U``, keeps them on the device, replies with the
  clipped contribution only: one ArrayRecord ``contribution`` (``A``, ``c`` or ``G``).
* ``train.moments`` : replies with the clipped ``M_i`` for the method-of-moments init.
* ``query.personalize`` : fits ``w_i, b_i`` for the published ``U`` and keeps them; replies empty.
* ``evaluate`` : the local loss of ``w_i, b_i`` stays on the device (``context.state``); replies empty.
* ``train.nn``, ``query.nn_personalize`` : a network task (run config ``task = "nn-..."``),
  :func:`fedlrs.client.network.train_nn` and :func:`~fedlrs.client.network.personalize_nn`.
* ``query.recsys_mean``, ``train.recsys``, ``query.recsys_personalize`` : the matrix-completion task
  (``task = "recsys"``), :mod:`fedlrs.client.recsys`.

No loss, example count or norm is ever put in a reply. With ``secure-aggregation`` on, the
mod of :mod:`fedlrs.client.secure_aggregation` runs Flower's SecAgg+ on every ``train``
message: the contribution (``train`` and the moments init alike) leaves the device only
masked, and a ``train`` message outside the protocol is refused.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlrs.core import sufficient_statistics
from fedlrs.federation_config import FederationConfig, parse_run_config
from fedlrs.client.contribution import clip_contribution, local_fit, moments_contribution, round_contribution
from fedlrs.client.data import load_user_data
from fedlrs.client.network import personalize_nn, train_nn
from fedlrs.client.recsys import register_recsys
from fedlrs.client.secure_aggregation import secure_aggregation_mod, secure_train
from fedlrs.client.state import LocalState, load_state, store_state
from fedlrs.recsys.flower_task import recsys_task
from fedlrs.protocol.messages import BILLBOARD, CLIP_BOUND, CONTRIBUTION, ROUND_CONFIG

LOCAL_METRICS = "fedlrs.local-metrics"


def _published_U(message: Message, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(message.content.array_records[BILLBOARD]["U"].numpy()).to(dtype)


def _round(message: Message) -> int:
    return int(message.content.config_records[ROUND_CONFIG]["round"])


def _clip_bound(message: Message) -> float | None:
    """The round's clip bound of the unit-free step, when the server sent one."""
    record = message.content.config_records[ROUND_CONFIG]
    return float(record[CLIP_BOUND]) if CLIP_BOUND in record else None


def _reply(message: Message, parts: dict[str, torch.Tensor]) -> Message:
    record = ArrayRecord({name: Array(value.detach().cpu().numpy()) for name, value in parts.items()})
    return Message(RecordDict({CONTRIBUTION: record}), reply_to=message)


def train(message: Message, context: Context, config: FederationConfig) -> Message:
    """One round: local step for the published U, then the clipped contribution and nothing else."""
    if config.secure_aggregation != "off":  # reached through the SecAgg+ mod only
        return secure_train(message, context, config)
    data = load_user_data(config, context.node_config)
    stats = sufficient_statistics(data)
    parts, fit = round_contribution(_published_U(message, config.torch_dtype), stats, config, _clip_bound(message))
    store_state(context, LocalState.from_fit(fit, _round(message)))
    return _reply(message, parts)


def moments(message: Message, context: Context, config: FederationConfig) -> Message:
    """The clipped ``M_i`` of the method-of-moments initialization."""
    return _reply(message, moments_contribution(load_user_data(config, context.node_config), config))


def clip(message: Message, context: Context, config: FederationConfig) -> Message:
    """The clip phase of a round: the one-hot bin of the norm of this device's unit-free contribution, nothing else."""
    stats = sufficient_statistics(load_user_data(config, context.node_config))
    return _reply(message, clip_contribution(_published_U(message, config.torch_dtype), stats, config, _clip_bound(message)))


def personalize(message: Message, context: Context, config: FederationConfig) -> Message:
    """Fit ``w_i, b_i`` for the published U and keep them on the device; nothing is sent back."""
    data = load_user_data(config, context.node_config)
    fit = local_fit(_published_U(message, config.torch_dtype), sufficient_statistics(data), config)
    store_state(context, LocalState.from_fit(fit, _round(message)))
    return Message(RecordDict(), reply_to=message)


def evaluate(message: Message, context: Context, config: FederationConfig) -> Message:
    """Local mean squared error of ``theta_i = U w_i + b_i``; kept in ``context.state``, never sent."""
    state = load_state(context)
    if state is not None:
        data = load_user_data(config, context.node_config)
        U = _published_U(message, config.torch_dtype).numpy()
        theta = U @ state.w + state.b
        X, y = data.X[0].numpy(), data.y[0].numpy()
        mse = float(np.mean((X @ theta - y) ** 2))
        context.state.metric_records[LOCAL_METRICS] = MetricRecord({"mse": mse, "round": state.round})
    return Message(RecordDict(), reply_to=message)


@functools.lru_cache(maxsize=8)
def _parsed(run_config: tuple, overrides: tuple) -> FederationConfig:
    # Parsed once per process: the simulation ships a fresh copy of the ClientApp with every message.
    return parse_run_config(dict(run_config), dict(overrides))


def make_client_app(overrides: Mapping[str, Any] | None = None, *, mods: Sequence[Callable] = ()) -> ClientApp:
    """A ClientApp; ``overrides`` (kebab-case) win over the run config (``run_simulation`` passes none).

    ``mods`` run before fedlrs's own (tests: a device that fails in the middle of a protocol).
    """
    frozen_overrides = tuple(sorted((overrides or {}).items()))

    def config_of(context: Context) -> FederationConfig:
        return _parsed(tuple(sorted(context.run_config.items())), frozen_overrides)

    client_app = ClientApp(mods=[*mods, secure_aggregation_mod(config_of)])

    def handler(function):
        def handle(message: Message, context: Context) -> Message:
            return function(message, context, config_of(context))

        handle.__name__ = function.__name__
        return handle

    client_app.train()(handler(train))
    client_app.train("moments")(handler(moments))
    client_app.train("clip")(handler(clip))
    client_app.query("personalize")(handler(personalize))
    client_app.train("nn")(handler(train_nn))
    client_app.query("nn_personalize")(handler(personalize_nn))
    client_app.evaluate()(handler(evaluate))
    register_recsys(client_app, lambda context: recsys_task(config_of(context)))  # task = "recsys"
    return client_app


app = make_client_app()
