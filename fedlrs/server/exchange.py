"""Sending one message per node and pulling the replies, with a timeout and a window (the billboards' messaging)."""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import INFO

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedlrs.server.validation import unavailable_notice

#: seconds between two pulls of the replies of a round
PULL_INTERVAL = 0.1


def _log(level: int, message: str, *args) -> None:
    from flwr.common.logger import log

    log(level, "[fedlrs] " + message, *args)


def exchange(grid: Grid, nodes: list[int], message_type: str, content: Callable[[], RecordDict], round_number: int, *,
             timeout: float, max_in_flight: int = 0) -> tuple[list[Message], dict[str, int]]:
    """Send one message per node and pull the replies; each node has ``timeout`` s (the run's
    ``round-timeout``) to answer; ``content()`` makes each message's content.

    Returns the replies and ``{message id: node it was sent to}``, so a reply is
    counted only as the answer of the node its message went to.

    At most ``max_in_flight`` messages are outstanding (0: all at once); a new one is
    pushed as soon as a reply comes or a node's time is up. Flower's in-memory link
    state scans every stored message for every node on each delivery sweep, so a
    simulation with N nodes and M outstanding messages spends O(N M) per sweep; a
    window keeps M small. A node's timeout starts when its message is pushed.

    Not ``grid.send_and_receive``: on a deployment it waits 3 s between pulls, here
    :data:`PULL_INTERVAL` (what a round costs on a small deployment is mostly such waits).
    """
    window = max_in_flight or len(nodes)
    waiting = list(reversed(nodes))
    sent: dict[str, int] = {}
    pending: dict[str, float] = {}  # message id -> deadline
    replies: list[Message] = []
    while waiting or pending:
        if waiting and len(pending) < window:
            batch = [waiting.pop() for _ in range(min(window - len(pending), len(waiting)))]
            messages = [Message(content(), dst_node_id=node, message_type=message_type,
                                group_id=str(round_number), ttl=timeout + 30) for node in batch]
            deadline = time.monotonic() + timeout
            for message_id, node in zip(grid.push_messages(messages), batch):
                sent[message_id], pending[message_id] = node, deadline
        pulled = list(grid.pull_messages(list(pending)))
        for reply in pulled:
            message_id = reply.metadata.reply_to_message_id
            notice = unavailable_notice(reply) if message_id in pending else None
            pending.pop(message_id, None)
            if notice is None:
                replies.append(reply)
            else:
                _log(INFO, "round %d: node %d is unavailable (SuperLink: %s)", round_number, sent[message_id], notice)
        now = time.monotonic()
        for message_id in [m for m, deadline in pending.items() if deadline <= now]:
            del pending[message_id]
        if pending and not pulled:
            time.sleep(PULL_INTERVAL)
    return replies, sent
