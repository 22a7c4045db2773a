"""The matrix-completion task through Flower, the server side: a ServerApp whose devices each hold their own ratings
(the device side: :mod:`fedlrs.client.recsys`).

Device ``partition-id`` i is user i of :func:`fedlrs.data.ratings.load_ratings` (``data``,
``protocol``, ``seed``, ``max_users``; its train + validation rows). The server knows only the
public item catalogue (d) and rating range. Messages:

* ``query.recsys_mean`` (a pre-step, non-private runs only): the device replies ``(sum of its ratings,
  number of ratings)``, from which the server forms the offset ``o`` (the training mean, as
  :func:`fedlrs.recsys.model.fit_recsys`); a private run never sends it (``o`` is the midpoint
  of the public range). A missing or failed reply is skipped.
* ``train.recsys``: content ``P`` (d, r + 1), the offset and the round; the device fits ``(w_i, a_i, b_i)``
  for ``P`` (:func:`fedlrs.recsys.model.local_fit`), keeps them in ``context.state``, and
  replies its contribution (:meth:`fedlrs.recsys.model.RecsysTask.contribution`: ``A`` (d, r', r'),
  ``c`` (d, r') or ``G`` (d, r'), clipped to the task's parts when private). The reply is dense over the
  catalogue, so it does not show which items the user rated.
* ``query.recsys_personalize``: the device fits its state for the final ``P``; replies empty.

The rounds are :class:`~fedlrs.recsys.model.RecsysTask`'s on the one loop (:func:`fedlrs.tasks.loop.run_task`)
over the Grid (:class:`~fedlrs.server.grid_transport.GridTransport`, the billboards' messaging of
:class:`~fedlrs.server.grid_transport.GridBoard`): every connected device each round (q = 1), a reply
that is not exactly the task's parts (names, shapes, dtype, finite, norms within the private bounds) is
refused, a missing one skipped, and fewer than ``min(min_nodes, asked)`` valid replies stop the run
before the release (:class:`~fedlrs.server.validation.TooFewRepliesError`). The sum is released through
:class:`~fedlrs.privacy.release.PrivateServer` (budget check, ledger record, noise; a release the budget
refuses ends the run, ``stopped`` says so) and ``P`` updated by the task's server step: the maths of the
in-process engine (one implementation).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from logging import WARNING
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedlrs.privacy import Ledger, write_privacy_report
from fedlrs.privacy.release import PrivateServer
from fedlrs.protocol.messages import BILLBOARD, ROUND_CONFIG
from fedlrs.recsys.flower_task import RecsysFlowerTask, ratings_split
from fedlrs.recsys.model import RecsysTask
from fedlrs.server.exchange import exchange
from fedlrs.server.grid_transport import GridBoard, GridTransport, Refusal, ReplyParts, connected_nodes, server_log
from fedlrs.server.validation import TooFewRepliesError
from fedlrs.tasks.loop import run_task

TRAIN_RECSYS, MEAN_RECSYS, PERSONALIZE_RECSYS = "train.recsys", "query.recsys_mean", "query.recsys_personalize"


_log = functools.partial(server_log, "fedlrs.recsys")


@dataclass
class RecsysFlowerResult:
    """The published ``P``, the offset, the devices connected at the start, (private) the ledger and z of a Flower run,
    the rounds done, why it stopped and the replies refused or missing."""

    P: torch.Tensor
    offset: float
    nodes: int
    ledger: Ledger | None = None
    noise_multiplier: float | None = None
    rounds_completed: int = 0
    stopped: str = "rounds done"
    refusals: list[Refusal] = field(default_factory=list)
    dropped: list[tuple[int, int]] = field(default_factory=list)  # (round, node id) that never replied

    def write(self, folder: str | Path, task: RecsysFlowerTask) -> Path:
        """``P.npy``, ``run.json`` (task, offset, devices, rounds) and, when private, the report ``fedlrs privacy audit`` checks."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "P.npy", self.P.numpy())
        config = asdict(task.config)
        facts = {"data": task.data, "protocol": task.protocol, "seed": task.seed, "max_users": task.max_users, "offset": self.offset, "nodes": self.nodes,
                 "rounds_completed": self.rounds_completed, "stopped": self.stopped, "refused_replies": len(self.refusals), "missing_replies": len(self.dropped)}
        (folder / "run.json").write_text(json.dumps({"run": facts, "config": config}, indent=2))
        if self.ledger is not None:
            if self.ledger.path is None:  # an in-memory ledger: persisted beside its report
                self.ledger.save_as(folder / "ledger.jsonl")
            write_privacy_report(self.ledger, out_dir=folder, delta=task.config.delta, config=config, budget=task.config.budget,
                                 planned_rounds=task.config.rounds, calibrated_noise_multiplier=self.noise_multiplier)
        return folder


def _content(P: torch.Tensor, offset: float, round_number: int) -> RecordDict:
    return RecordDict({BILLBOARD: ArrayRecord({"P": Array(P.numpy())}), ROUND_CONFIG: ConfigRecord({"round": round_number, "offset": offset})})


class RecsysBoard(GridBoard):
    """The recommender's messaging over the Grid: ``train.recsys`` carries ``P`` and the offset, a valid reply is exactly ``parts``."""

    def __init__(self, parts, *, min_nodes: int, round_timeout: float):
        super().__init__(min_nodes=min_nodes, round_timeout=round_timeout)
        self.parts = list(parts)

    def published(self, shared: dict) -> dict:
        return shared

    def _content(self, shared: dict, round_number: int) -> RecordDict:
        return _content(shared["P"], shared["offset"], round_number)

    def _parts(self, phase: str) -> ReplyParts:
        return {p.name: (p.shape, p.bound) for p in self.parts}

    def _message_type(self, phase: str) -> str:
        return TRAIN_RECSYS


def training_mean(grid: Grid, nodes: list[int], *, min_nodes: int, round_timeout: float) -> float:
    """``o = sum of the replying devices' ratings / their number`` (``query.recsys_mean``, in node order); a missing, failed
    or malformed reply is skipped, and fewer than ``min(min_nodes, asked)`` valid replies raise :class:`TooFewRepliesError`."""
    replies, sent = exchange(grid, nodes, MEAN_RECSYS, lambda: RecordDict(), 0, timeout=round_timeout)
    totals = {}
    for reply in replies:
        node = sent.get(reply.metadata.reply_to_message_id)
        record = None if reply.has_error() else reply.content.metric_records.get("mean")
        valid = record is not None and all(isinstance(record.get(k), (int, float)) and math.isfinite(record[k]) for k in ("sum", "count")) \
            and record["count"] >= 0
        if node is None or node in totals or not valid:
            _log(WARNING, "%s: refused the reply of node %s", MEAN_RECSYS, reply.metadata.src_node_id)
            continue
        totals[node] = record
    if len(totals) < min(min_nodes, len(nodes)):
        raise TooFewRepliesError(f"{MEAN_RECSYS}: {len(totals)} of {len(nodes)} asked devices replied, fewer than "
                                 f"{min(min_nodes, len(nodes))} (min-nodes == {min_nodes}); the offset was not formed.")
    ordered = [totals[node] for node in sorted(totals)]
    return sum(t["sum"] for t in ordered) / max(sum(t["count"] for t in ordered), 1.0)


def run_recsys(grid: Grid, task: RecsysFlowerTask, *, ledger: Ledger | None = None, min_nodes: int = 1, wait_for_nodes: float = 0.0,
               round_timeout: float = 60.0) -> RecsysFlowerResult:
    """The rounds of :func:`fedlrs.recsys.model.fit_recsys` (q = 1) over the Grid's devices on the one loop (module docstring):
    at least ``min_nodes`` connected within ``wait_for_nodes`` s, each with ``round_timeout`` s to answer a message."""
    config = task.config
    split = ratings_split(task.data, task.protocol, task.seed, task.max_users)
    d, rating_range = split.num_items, split.rating_range  # public: the catalogue and the rating scale
    nodes = connected_nodes(grid, min_nodes, wait_for_nodes)
    if len(nodes) < min_nodes:
        raise RuntimeError(f"{len(nodes)} devices connected within wait-for-nodes == {wait_for_nodes} s, min-nodes == {min_nodes}.")
    if config.private:
        offset = (rating_range[0] + rating_range[1]) / 2
    else:
        offset = training_mean(grid, nodes, min_nodes=min_nodes, round_timeout=round_timeout)
    private = PrivateServer(config, ledger if ledger is not None else Ledger()) if config.private else None
    model = RecsysTask(config, d, rating_range=rating_range, offset=offset, expected_count=config.sample_rate * len(nodes),
                       noise_multiplier=None if private is None else private.calibrate())
    board = RecsysBoard(model.round_parts, min_nodes=min_nodes, round_timeout=round_timeout)
    outcome = run_task(model, GridTransport(board, grid, nodes), generator=torch.Generator().manual_seed(config.seed), private=private)
    if outcome.stopped != "rounds done":
        _log(WARNING, "round %d not released: %s", outcome.completed + 1, outcome.stopped)
    board._exchange(grid, sorted(int(n) for n in grid.get_node_ids()), PERSONALIZE_RECSYS, outcome.shared, outcome.completed)
    return RecsysFlowerResult(outcome.shared["P"], offset, len(nodes), None if private is None else private.ledger,
                              None if private is None else private.noise_multiplier, outcome.completed, outcome.stopped, board.refusals, board.dropped)


def make_recsys_server_app(task: RecsysFlowerTask) -> ServerApp:
    """A ServerApp running :func:`run_recsys` on its Grid."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_recsys(grid, task)

    return app
