"""Flower's Grid as a transport of the one round loop (:mod:`fedlrs.tasks.loop`): the server's nodes are the users.

:class:`GridBoard` is the server's messaging of a phase, shared by every server over the Grid (the
billboards of :mod:`fedlrs.server.billboard` and :mod:`fedlrs.server.network`, the recommender of
:mod:`fedlrs.server.recsys`): one message per sampled node, replies validated against the phase's
parts (:func:`fedlrs.protocol.validation.validate_reply`), refused and missing ones logged and skipped,
too few valid replies refused before the release (:func:`fedlrs.server.validation.require_replies`:
:class:`~fedlrs.server.validation.TooFewRepliesError`), the rest summed in node order.
:class:`GridTransport`'s ``collect`` runs it (or a SecAgg+ cohort) for the loop's sample. User i of
the loop's sample is the i-th connected node in increasing id order (the engine's convention,
:func:`fedlrs.privacy.sampling.sample_nodes`); the nodes are read again at the start of each round.
Under SecAgg+ the moments init and the rounds are released by the secure aggregation
(:meth:`fedlrs.server.secure_aggregation.SecureAggregation.release`, same ledger, same PrivateServer).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from logging import WARNING

import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedlrs.server.exchange import exchange
from fedlrs.server.validation import RefusedReply, require_replies, validate_reply
from fedlrs.tasks.base import ROUND, USERS, Sums, count
from fedlrs.tasks.linear import clip_center

#: a phase's valid reply: ``{part name: (shape, L2 bound)}`` (infinite: not clipped)
ReplyParts = dict[str, tuple[tuple[int, ...], float]]


def server_log(source: str, level: int, message: str, *args) -> None:
    """Flower's log, the line prefixed with its source (``[fedlrs]``, ``[fedlrs.nn]``, ``[fedlrs.recsys]``): the server sides' one logger."""
    from flwr.common.logger import log

    log(level, f"[{source}] " + message, *args)


_log = functools.partial(server_log, "fedlrs")


def connected_nodes(grid: Grid, min_nodes: int, wait_for_nodes: float) -> list[int]:
    """The connected nodes in increasing id order, once ``min_nodes`` are there or ``wait_for_nodes`` s have passed."""
    deadline = time.monotonic() + wait_for_nodes
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= min_nodes or time.monotonic() >= deadline:
            return nodes
        time.sleep(0.5)


@dataclass
class Refusal:
    """A reply the server did not count, and why."""

    round: int
    node_id: int
    reason: str


class GridBoard:
    """A server's messaging over the Grid (module docstring), with the record of what it refused, missed and counted.

    A subclass says what a valid reply of a phase holds (``_parts(phase)``), which message asks for it
    (``_message_type(phase)``), what a request carries (``_content(published, round_number)``) and what of the
    loop's shared state goes out (``published(shared)``); ``secure`` (SecAgg+) replaces the collection when set.
    ``min_nodes``: a phase needs ``min(min_nodes, asked)`` valid replies; each node has ``round_timeout`` s to answer,
    at most ``max_in_flight`` messages are outstanding (0: all); a reply's arrays are of ``dtype``.
    """

    secure = None

    def __init__(self, *, min_nodes: int, round_timeout: float, max_in_flight: int = 0, dtype: torch.dtype = torch.float64):
        self.min_nodes, self.round_timeout, self.max_in_flight, self.dtype = min_nodes, round_timeout, max_in_flight, dtype
        self.refusals: list[Refusal] = []
        self.dropped: list[tuple[int, int]] = []  # (round, node id) that never replied
        self.sampled: dict[int, list[int]] = {}
        self.counted: dict[int, int] = {}  # round (0: an init) -> replies counted
        self.clip_bound: float | None = None

    def published(self, shared: dict):
        raise NotImplementedError

    def _content(self, published, round_number: int) -> RecordDict:
        raise NotImplementedError

    def _parts(self, phase: str) -> ReplyParts:
        raise NotImplementedError

    def _message_type(self, phase: str) -> str:
        raise NotImplementedError

    def _collect_secure(self, grid: Grid, nodes: list[int], phase: str, published, round_number: int) -> Sums:
        raise NotImplementedError

    def _exchange(self, grid: Grid, nodes: list[int], message_type: str, published, round_number: int) -> tuple[list[Message], dict[str, int]]:
        """:func:`fedlrs.server.exchange.exchange` of this round's content (``round_timeout``, ``max_in_flight``)."""
        return exchange(grid, nodes, message_type, lambda: self._content(published, round_number), round_number,
                        timeout=self.round_timeout, max_in_flight=self.max_in_flight)

    def _validate(self, reply: Message, parts: ReplyParts) -> dict[str, torch.Tensor]:
        """A reply's parts (:func:`~fedlrs.protocol.validation.validate_reply`), or :class:`RefusedReply`."""
        return validate_reply(reply, parts, self.dtype)

    def _collect(self, grid: Grid, nodes: list[int], phase: str, published, round_number: int) -> Sums:
        """The sum of the valid contributions of ``nodes``; refused and missing replies are logged and skipped."""
        if self.secure is not None:
            return self._collect_secure(grid, nodes, phase, published, round_number)
        parts = self._parts(phase)
        sums = {name: torch.zeros(shape, dtype=self.dtype) for name, (shape, _) in parts.items()}
        replies, sent = self._exchange(grid, nodes, self._message_type(phase), published, round_number)
        asked, seen, accepted = set(nodes), set(), {}
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            try:
                if node not in asked:
                    raise RefusedReply("the node was not sampled in this round.")
                if sent.get(reply.metadata.reply_to_message_id) != node:
                    raise RefusedReply("the reply does not answer the message sent to this node in this round.")
                if node in seen:
                    raise RefusedReply("a second reply from the same node.")
                seen.add(node)
                accepted[node] = self._validate(reply, parts)
            except RefusedReply as error:
                self.refusals.append(Refusal(round_number, node, str(error)))
                _log(WARNING, "round %d: refused the reply of node %d: %s", round_number, node, error)
        for node in sorted(asked - seen):
            self.dropped.append((round_number, node))
            _log(WARNING, "round %d: node %d did not reply (gone, or silent for round-timeout == %.1f s); "
                          "the round goes on without it", round_number, node, self.round_timeout)
        self.counted[round_number] = len(accepted)
        require_replies(round_number, len(asked), len(accepted), self.min_nodes)
        for node in sorted(accepted):  # a fixed order: the sum does not depend on arrival order
            for name, value in accepted[node].items():
                sums[name] += value.to(sums[name].dtype)
        return sums


class GridTransport:
    """The nodes of ``grid`` behind ``billboard`` (a :class:`GridBoard`: a billboard, the recommender's server), starting with ``nodes``."""

    def __init__(self, billboard, grid, nodes: list[int]):
        self.billboard, self.grid, self.nodes = billboard, grid, list(nodes)

    @property
    def num_users(self) -> int:
        return len(self.nodes)

    def start_round(self, round_number: int) -> None:
        """The nodes connected now, in increasing id order."""
        self.nodes = sorted(int(n) for n in self.grid.get_node_ids())

    def collect(self, phase: str, shared: dict, index: torch.Tensor | None, round_number: int) -> Sums:
        """The sum of the valid replies of the sampled nodes, counted as the sample (a node that drops out adds nothing)."""
        board = self.billboard
        sampled = self.nodes if index is None else [self.nodes[i] for i in index.tolist()]
        if phase == ROUND:
            board.sampled[round_number] = sampled
        # sent with the request: the round's bound (checked in its replies), or the clip phase's grid center (the previous bound)
        board.clip_bound = shared.get("bound") if phase == ROUND else clip_center(shared) if phase == "clip" else None
        return {**board._collect(self.grid, sampled, phase, board.published(shared), round_number), USERS: count(len(sampled))}

    def release(self, private, phase: str, shared: dict, sums: Sums, event, expected_count: float) -> Sums | None:
        """SecAgg+'s release of the init and the rounds; None (the task's release) otherwise and for the clip histogram."""
        secure = self.billboard.secure
        if secure is None or phase == "clip":
            return None
        return secure.release(private, sums, event, expected_count)
