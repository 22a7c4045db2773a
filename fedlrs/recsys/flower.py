"""The matrix-completion task through Flower: a ServerApp and a ClientApp where each device holds its own ratings.

Device ``partition-id`` i is user i of :func:`fedlrs.recsys.data.load_ratings` (``data``,
``protocol``, ``seed``, ``max_users``; its train + validation rows). The server knows only the
public item catalogue (d) and rating range. Messages:

* ``query.recsys_mean``: the device replies ``(sum of its ratings, number of ratings)``, from
  which the server forms the non-private offset ``o`` (the training mean, as
  :func:`fedlrs.recsys.model.fit_recsys`); a private run never sends it (``o`` is the midpoint
  of the public range).
* ``train.recsys``: content ``P`` (d, r + 1) and the round; the device fits ``(w_i, a_i, b_i)``
  for ``P`` (:func:`fedlrs.recsys.model.local_fit`), keeps them in ``context.state``, and
  replies its contribution (:func:`fedlrs.recsys.model.contribution_sums`: ``A`` (d, r', r'),
  ``c`` (d, r'), clipped when private). The reply is dense over the catalogue, so it does
  not show which items the user rated.
* ``query.recsys_personalize``: the device fits its state for the final ``P``; replies empty.

The server sums the replies and updates ``P`` with :func:`fedlrs.recsys.model.server_step`
(privately: the one release path, budget check and ledger record first). Same maths as the
engine (one implementation); every user takes part in every round (q = 1).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedlrs.core.sparse import item_statistics

from fedlrs.privacy import Ledger

from .data import load_ratings
from .model import RecsysConfig, _PrivateRelease, contribution_sums, contribution_weights, local_fit, server_step

STATE = "fedlrs.recsys-state"


@dataclass(frozen=True)
class RecsysFlowerTask:
    """Which data each device holds (``data``, ``protocol``, ``seed``, ``max_users``) and the model's :class:`RecsysConfig`."""

    data: str = "movielens"
    protocol: str = "random"
    seed: int = 0
    max_users: int | None = None
    config: RecsysConfig = field(default_factory=RecsysConfig)

    def __post_init__(self) -> None:
        if self.config.sample_rate != 1.0:
            raise ValueError(f"sample_rate == {self.config.sample_rate}: the Flower recsys task runs every user every round (1.0).")


@functools.lru_cache(maxsize=4)
def _split(data: str, protocol: str, seed: int, max_users: int | None):
    return load_ratings(data, protocol=protocol, seed=seed, max_users=max_users)


def device_ratings(task: RecsysFlowerTask, partition_id: int):
    """The :class:`ItemStats` (one user) of device ``partition_id`` and the public (d, rating range)."""
    split = _split(task.data, task.protocol, task.seed, task.max_users)
    if not 0 <= partition_id < split.num_users:
        raise ValueError(f"partition-id == {partition_id}, must be in [0, {split.num_users}) (one device per user).")
    rows = split.train_full
    mine = rows.users == partition_id
    stats = item_statistics(np.zeros(int(mine.sum()), dtype=np.int64), rows.items[mine], rows.ratings[mine], num_users=1, num_items=split.num_items)
    return stats, split.num_items, split.rating_range


@functools.lru_cache(maxsize=4)
def _private(task: RecsysFlowerTask, rating_range) -> _PrivateRelease | None:
    """The device's view of the release: its public bounds (z is calibrated once per process)."""
    return _PrivateRelease(task.config, rating_range, Ledger()) if task.config.private else None


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
        P = torch.from_numpy(message.content.array_records["billboard"]["P"].numpy())
        offset = float(message.content.config_records["round-config"]["offset"])
        fit = local_fit(P, stats, task.config, offset)
        context.state.array_records[STATE] = ArrayRecord({"w": Array(fit.w.numpy()), "user_bias": Array(fit.user_bias.numpy()),
                                                          "b_items": Array(fit.b_items.numpy()), "b_values": Array(fit.b_values.numpy())})
        return stats, P, offset, fit, rating_range

    @app.train("recsys")
    def train(message: Message, context: Context) -> Message:
        stats, P, offset, fit, rating_range = fit_for(message, context)
        private = _private(task, rating_range)
        generator = torch.Generator().manual_seed(task.config.seed + int(context.node_config["partition-id"]))
        weights = contribution_weights(stats, task.config.rating_cap if private is not None else 0, generator)
        sums = contribution_sums(P, fit, stats, task.config, offset, private, weights)
        return Message(RecordDict({"contribution": ArrayRecord({k: Array(v.numpy()) for k, v in sums.items()})}), reply_to=message)

    @app.query("recsys_personalize")
    def personalize(message: Message, context: Context) -> Message:
        fit_for(message, context)
        return Message(RecordDict(), reply_to=message)

    return app


@dataclass
class RecsysFlowerResult:
    """The published ``P``, the offset and (private) the ledger of a Flower run."""

    P: torch.Tensor
    offset: float
    ledger: Ledger | None = None


def _broadcast(grid: Grid, nodes: list[int], message_type: str, content: RecordDict) -> list[Message]:
    messages = [grid.create_message(content=content, message_type=message_type, dst_node_id=node, group_id=message_type) for node in nodes]
    replies = list(grid.send_and_receive(messages))
    if len(replies) != len(nodes) or any(reply.has_error() for reply in replies):
        raise RuntimeError(f"{message_type}: {len(nodes)} devices asked, {len(replies)} replied (errors or lost replies are not handled by this task).")
    return replies


def _content(P: torch.Tensor, offset: float, round_number: int) -> RecordDict:
    return RecordDict({"billboard": ArrayRecord({"P": Array(P.numpy())}), "round-config": ConfigRecord({"round": round_number, "offset": offset})})


def run_recsys(grid: Grid, task: RecsysFlowerTask, *, ledger: Ledger | None = None) -> RecsysFlowerResult:
    """The server's rounds of :func:`fedlrs.recsys.model.fit_recsys` (q = 1) over the Grid's devices."""
    config = task.config
    split = _split(task.data, task.protocol, task.seed, task.max_users)
    d, rating_range = split.num_items, split.rating_range  # public: the catalogue and the rating scale
    nodes = sorted(int(n) for n in grid.get_node_ids())
    generator = torch.Generator().manual_seed(config.seed)
    P = torch.cat([config.init_scale * torch.randn(d, config.rank, generator=generator, dtype=torch.float64), torch.zeros(d, 1, dtype=torch.float64)], dim=1)
    if config.private:
        offset = (rating_range[0] + rating_range[1]) / 2
    else:
        replies = _broadcast(grid, nodes, "query.recsys_mean", RecordDict())
        totals = [r.content.metric_records["mean"] for r in replies]
        offset = sum(t["sum"] for t in totals) / max(sum(t["count"] for t in totals), 1.0)
    private = _PrivateRelease(config, rating_range, ledger if ledger is not None else Ledger()) if config.private else None
    for round_number in range(1, config.rounds + 1):
        replies = _broadcast(grid, nodes, "train.recsys", _content(P, offset, round_number))
        parts = [r.content.array_records["contribution"] for r in replies]
        sums = {name: sum(torch.from_numpy(part[name].numpy()) for part in parts) for name in parts[0].keys()}
        P = server_step(P, sums, config, float(len(nodes)), private, round_number)
    _broadcast(grid, nodes, "query.recsys_personalize", _content(P, offset, config.rounds))
    return RecsysFlowerResult(P, offset, None if private is None else private.ledger)


def make_recsys_server_app(task: RecsysFlowerTask) -> ServerApp:
    """A ServerApp running :func:`run_recsys` on its Grid."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_recsys(grid, task)

    return app
