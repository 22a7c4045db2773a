"""The matrix-completion task through Flower, the server side: a ServerApp whose devices each hold their own ratings
(the device side: :mod:`fedlrs.client.recsys`).

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

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedlrs.privacy import Ledger, write_privacy_report
from fedlrs.protocol.messages import BILLBOARD, CONTRIBUTION, ROUND_CONFIG
from fedlrs.recsys.flower_task import RecsysFlowerTask, ratings_split
from fedlrs.recsys.model import _PrivateRelease, server_step
from fedlrs.server.exchange import exchange


@dataclass
class RecsysFlowerResult:
    """The published ``P``, the offset, the devices that took part and (private) the ledger and z of a Flower run."""

    P: torch.Tensor
    offset: float
    nodes: int
    ledger: Ledger | None = None
    noise_multiplier: float | None = None

    def write(self, folder: str | Path, task: RecsysFlowerTask) -> Path:
        """``P.npy``, ``run.json`` (task, offset, devices) and, when private, the report ``fedlrs privacy audit`` checks."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "P.npy", self.P.numpy())
        config = asdict(task.config)
        facts = {"data": task.data, "protocol": task.protocol, "seed": task.seed, "max_users": task.max_users, "offset": self.offset, "nodes": self.nodes}
        (folder / "run.json").write_text(json.dumps({"run": facts, "config": config}, indent=2))
        if self.ledger is not None:
            if self.ledger.path is None:  # an in-memory ledger: persisted beside its report
                self.ledger.save_as(folder / "ledger.jsonl")
            write_privacy_report(self.ledger, out_dir=folder, delta=task.config.delta, config=config, budget=task.config.budget,
                                 planned_rounds=task.config.rounds, calibrated_noise_multiplier=self.noise_multiplier)
        return folder


def _broadcast(grid: Grid, nodes: list[int], message_type: str, content: RecordDict, round_number: int, timeout: float) -> list[Message]:
    """Every node's reply to ``message_type`` (:func:`fedlrs.server.exchange.exchange`), in node order; a missing or failed reply stops the run."""
    replies, sent = exchange(grid, nodes, message_type, lambda: content, round_number, timeout=timeout)
    if len(replies) != len(nodes) or any(reply.has_error() for reply in replies):
        raise RuntimeError(f"{message_type}: {len(nodes)} devices asked, {len(replies)} replied (errors or lost replies are not handled by this task).")
    return sorted(replies, key=lambda reply: sent[reply.metadata.reply_to_message_id])


def _content(P: torch.Tensor, offset: float, round_number: int) -> RecordDict:
    return RecordDict({BILLBOARD: ArrayRecord({"P": Array(P.numpy())}), ROUND_CONFIG: ConfigRecord({"round": round_number, "offset": offset})})


def _wait_for_nodes(grid: Grid, min_nodes: int, wait_for_nodes: float) -> list[int]:
    deadline = time.monotonic() + wait_for_nodes
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= min_nodes or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if len(nodes) < min_nodes:
        raise RuntimeError(f"{len(nodes)} devices connected within wait-for-nodes == {wait_for_nodes} s, min-nodes == {min_nodes}.")
    return nodes


def run_recsys(grid: Grid, task: RecsysFlowerTask, *, ledger: Ledger | None = None, min_nodes: int = 1, wait_for_nodes: float = 0.0,
               round_timeout: float = 60.0) -> RecsysFlowerResult:
    """The server's rounds of :func:`fedlrs.recsys.model.fit_recsys` (q = 1) over the Grid's devices (at least ``min_nodes``;
    each has ``round_timeout`` s to answer a message)."""
    config = task.config
    split = ratings_split(task.data, task.protocol, task.seed, task.max_users)
    d, rating_range = split.num_items, split.rating_range  # public: the catalogue and the rating scale
    nodes = _wait_for_nodes(grid, min_nodes, wait_for_nodes)
    generator = torch.Generator().manual_seed(config.seed)
    P = torch.cat([config.init_scale * torch.randn(d, config.rank, generator=generator, dtype=torch.float64), torch.zeros(d, 1, dtype=torch.float64)], dim=1)
    if config.private:
        offset = (rating_range[0] + rating_range[1]) / 2
    else:
        replies = _broadcast(grid, nodes, "query.recsys_mean", RecordDict(), 0, round_timeout)
        totals = [r.content.metric_records["mean"] for r in replies]
        offset = sum(t["sum"] for t in totals) / max(sum(t["count"] for t in totals), 1.0)
    private = _PrivateRelease(config, rating_range, ledger if ledger is not None else Ledger()) if config.private else None
    for round_number in range(1, config.rounds + 1):
        replies = _broadcast(grid, nodes, "train.recsys", _content(P, offset, round_number), round_number, round_timeout)
        parts = [r.content.array_records[CONTRIBUTION] for r in replies]
        sums = {name: sum(torch.from_numpy(part[name].numpy()) for part in parts) for name in parts[0].keys()}
        P = server_step(P, sums, config, float(len(nodes)), private, round_number)
    _broadcast(grid, nodes, "query.recsys_personalize", _content(P, offset, config.rounds), config.rounds + 1, round_timeout)
    if private is None:
        return RecsysFlowerResult(P, offset, len(nodes))
    return RecsysFlowerResult(P, offset, len(nodes), private.ledger, private.noise_multiplier)


def make_recsys_server_app(task: RecsysFlowerTask) -> ServerApp:
    """A ServerApp running :func:`run_recsys` on its Grid."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_recsys(grid, task)

    return app
