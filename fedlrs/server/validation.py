"""The server's checks of a phase's replies, beside :func:`fedlrs.protocol.validation.validate_reply`.

A reply is refused (and the round goes on without it) when it is not exactly a valid clipped
contribution (:mod:`fedlrs.protocol.validation`, re-exported here), comes from a node that was
not asked or repeats a node (:meth:`fedlrs.server.grid_transport.GridBoard._collect`). Here: too few
valid replies stop the run before the release (:func:`require_replies`), and the SuperLink's
notice that a node is gone is told apart from a bad reply (:func:`unavailable_notice`).
"""

from __future__ import annotations

from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID

from fedlrs.protocol.validation import NORM_SLACK, RefusedReply, validate_reply  # noqa: F401 - the server's checks, in one place


class TooFewRepliesError(RuntimeError):
    """A phase with fewer valid replies than ``min-nodes`` (or than devices asked, when fewer were asked):
    the run stops before the phase's release is recorded, so no noise is published as if it were a sum."""


def require_replies(round_number: int, asked: int, counted: int, min_nodes: int) -> None:
    """Raise :class:`TooFewRepliesError` when ``counted < min(min_nodes, asked)``; call it before the phase's release.

    The ledger and the published state stay those of the last complete round, from which the run
    resumes. A round that Poisson sampling gave no device (``asked == 0``) is the mechanism's own
    and passes.
    """
    required = min(min_nodes, asked)
    if counted < required:
        phase = "the moments init" if round_number == 0 else f"round {round_number}"
        raise TooFewRepliesError(
            f"{phase}: {counted} of {asked} asked devices replied with a valid contribution, fewer than "
            f"{required} (min-nodes == {min_nodes}); nothing was released for it. Fix the devices and run "
            f"again: the run resumes from its checkpoint-dir.")


def unavailable_notice(reply: Message) -> str | None:
    """The SuperLink's reason when ``reply`` is its notice that a message's node is offline or gone, else None.

    The SuperLink answers a message whose node stopped sending heartbeats with an error
    reply of its own (from and to ``SUPERLINK_NODE_ID``, a node id no SuperNode gets): the
    node dropped out, it did not send a bad reply.
    """
    metadata = reply.metadata
    if metadata.src_node_id == SUPERLINK_NODE_ID and metadata.dst_node_id == SUPERLINK_NODE_ID and reply.has_error():
        return reply.error.reason or "node unavailable"
    return None
