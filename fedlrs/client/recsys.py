"""The matrix-completion task on the device: its ratings never leave it, only the (clipped) contribution sums do.

Answers ``query.recsys_mean``, ``train.recsys`` and ``query.recsys_personalize`` (the protocol is
described in :mod:`fedlrs.server.recsys`); the fitted ``(w_i, a_i, b_i)`` stay in ``context.state``.
"""

from __future__ import annotations

import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlrs.protocol.messages import BILLBOARD, CONTRIBUTION, ROUND_CONFIG
from fedlrs.recsys.flower_task import RecsysFlowerTask, device_ratings, device_release
from fedlrs.recsys.model import contribution_sums, contribution_weights, local_fit

STATE = "fedlrs.recsys-state"


def make_recsys_client_app(task: RecsysFlowerTask) -> ClientApp:
    """The device side: its ratings never leave it; only the (clipped) contribution sums do."""
    app = ClientApp()

    def stats_of(context: Context):
        return device_ratings(task, int(context.node_config["partition-id"]))

    @app.query("recsys_mean")
    def mean(message: Message, context: Context) -> Message:
        stats, _, _ = stats_of(context)
        record = MetricRecord({"sum": float(stats.total.sum()), "count": float(stats.count.sum())})
        return Message(RecordDict({"mean": record}), reply_to=message)

    def fit_for(message: Message, context: Context):
        stats, _, rating_range = stats_of(context)
        P = torch.from_numpy(message.content.array_records[BILLBOARD]["P"].numpy())
        offset = float(message.content.config_records[ROUND_CONFIG]["offset"])
        fit = local_fit(P, stats, task.config, offset)
        context.state.array_records[STATE] = ArrayRecord({"w": Array(fit.w.numpy()), "user_bias": Array(fit.user_bias.numpy()),
                                                          "b_items": Array(fit.b_items.numpy()), "b_values": Array(fit.b_values.numpy())})
        return stats, P, offset, fit, rating_range

    @app.train("recsys")
    def train(message: Message, context: Context) -> Message:
        stats, P, offset, fit, rating_range = fit_for(message, context)
        private = device_release(task, rating_range)
        generator = torch.Generator().manual_seed(task.config.seed + int(context.node_config["partition-id"]))
        weights = contribution_weights(stats, task.config.rating_cap if private is not None else 0, generator)
        sums = contribution_sums(P, fit, stats, task.config, offset, private, weights)
        return Message(RecordDict({CONTRIBUTION: ArrayRecord({k: Array(v.numpy()) for k, v in sums.items()})}), reply_to=message)

    @app.query("recsys_personalize")
    def personalize(message: Message, context: Context) -> Message:
        fit_for(message, context)
        return Message(RecordDict(), reply_to=message)

    return app
