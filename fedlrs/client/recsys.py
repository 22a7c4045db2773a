"""The matrix-completion task on the device: its ratings never leave it, only the (clipped) contribution sums do.

Answers ``query.recsys_mean``, ``train.recsys`` and ``query.recsys_personalize`` (the protocol is
described in :mod:`fedlrs.server.recsys`); the fitted ``(w_i, a_i, b_i)`` stay in ``context.state``.
The handlers take the task as their third argument: :func:`make_recsys_client_app` binds one task,
:func:`register_recsys` lets :mod:`fedlrs.client.app` read it from the run config (``task = "recsys"``).
"""

from __future__ import annotations

from typing import Callable

import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlrs.protocol.messages import BILLBOARD, CONTRIBUTION, ROUND_CONFIG
from fedlrs.recsys.flower_task import RecsysFlowerTask, device_ratings, device_task
from fedlrs.recsys.model import local_fit

STATE = "fedlrs.recsys-state"


def _stats_of(task: RecsysFlowerTask, context: Context):
    return device_ratings(task, int(context.node_config["partition-id"]))


def mean(message: Message, context: Context, task: RecsysFlowerTask) -> Message:
    """The sum of the device's ratings and their number (the non-private offset only)."""
    stats, _, _ = _stats_of(task, context)
    record = MetricRecord({"sum": float(stats.total.sum()), "count": float(stats.count.sum())})
    return Message(RecordDict({"mean": record}), reply_to=message)


def _fit_for(message: Message, context: Context, task: RecsysFlowerTask):
    stats, num_items, rating_range = _stats_of(task, context)
    P = torch.from_numpy(message.content.array_records[BILLBOARD]["P"].numpy())
    offset = float(message.content.config_records[ROUND_CONFIG]["offset"])
    fit = local_fit(P, stats, task.config, offset)
    context.state.array_records[STATE] = ArrayRecord({"w": Array(fit.w.numpy()), "user_bias": Array(fit.user_bias.numpy()),
                                                      "b_items": Array(fit.b_items.numpy()), "b_values": Array(fit.b_values.numpy())})
    return stats, P, offset, fit, num_items, rating_range


def train(message: Message, context: Context, task: RecsysFlowerTask) -> Message:
    """Fit ``(w_i, a_i, b_i)`` for the published ``P``, keep them, reply the (clipped, when private) contribution:
    :meth:`RecsysTask.contribution <fedlrs.recsys.model.RecsysTask.contribution>` for a batch of one, clipped to the task's parts."""
    stats, P, offset, fit, num_items, rating_range = _fit_for(message, context, task)
    generator = torch.Generator().manual_seed(task.config.seed + int(context.node_config["partition-id"]))
    sums = device_task(task, num_items, rating_range).contribution({"P": P, "offset": offset}, fit, stats, generator)
    return Message(RecordDict({CONTRIBUTION: ArrayRecord({k: Array(v.numpy()) for k, v in sums.items()})}), reply_to=message)


def personalize(message: Message, context: Context, task: RecsysFlowerTask) -> Message:
    """Fit and keep ``(w_i, a_i, b_i)`` for the final ``P``; reply empty."""
    _fit_for(message, context, task)
    return Message(RecordDict(), reply_to=message)


def register_recsys(app: ClientApp, task_of: Callable[[Context], RecsysFlowerTask]) -> ClientApp:
    """Register the three recsys handlers on ``app``; ``task_of(context)`` gives the run's task."""
    def bound(function):
        def handle(message: Message, context: Context) -> Message:
            return function(message, context, task_of(context))

        handle.__name__ = function.__name__
        return handle

    for kind, name, function in (("query", "recsys_mean", mean), ("train", "recsys", train), ("query", "recsys_personalize", personalize)):
        getattr(app, kind)(name)(bound(function))
    return app


def make_recsys_client_app(task: RecsysFlowerTask) -> ClientApp:
    """The device side of one task: its ratings never leave it; only the (clipped) contribution sums do."""
    return register_recsys(ClientApp(), lambda context: task)
