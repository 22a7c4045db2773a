"""Validation of a client's reply: it must be exactly the contribution the protocol allows.

A reply is refused (and the round goes on without it) when it carries an error,
comes from a node that was not asked, repeats a node, holds any record but the
ArrayRecord ``contribution``, misses or adds an array, has the wrong shape or
dtype, holds NaN/inf, or a part whose L2 norm is above its clipping bound.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID

CONTRIBUTION = "contribution"
#: relative slack on the clipping bound for the rounding of the client's scaling
NORM_SLACK = 1e-9


class RefusedReply(ValueError):
    """A reply that does not meet the protocol; the message says why."""


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


def validate_reply(reply: Message, parts: dict[str, tuple[tuple[int, ...], float]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The reply's parts as tensors, or :class:`RefusedReply` with the reason.

    ``parts`` is ``{name: (shape, bound)}`` from :func:`fedlrs.client.contribution.expected_parts`.
    """
    if reply.has_error():
        raise RefusedReply(f"the client reported an error: {reply.error.reason!r}")
    content = reply.content
    keys = set(content.keys())
    if keys != {CONTRIBUTION} or CONTRIBUTION not in content.array_records:
        raise RefusedReply(f"records {sorted(keys)}, must be exactly the ArrayRecord {CONTRIBUTION!r}.")
    record = content.array_records[CONTRIBUTION]
    names = set(record.keys())
    if names != set(parts):
        extra, missing = sorted(names - set(parts)), sorted(set(parts) - names)
        raise RefusedReply(f"arrays {sorted(names)}, must be exactly {sorted(parts)} (extra {extra}, missing {missing}).")
    expected_dtype = str(torch.empty(0, dtype=dtype).numpy().dtype)
    tensors = {}
    for name, (shape, bound) in parts.items():
        array = record[name]
        if array.dtype != expected_dtype:
            raise RefusedReply(f"{name} has dtype {array.dtype!r}, must be {expected_dtype!r}.")
        if tuple(array.shape) != tuple(shape):
            raise RefusedReply(f"{name} has shape {tuple(array.shape)}, must be {tuple(shape)}.")
        try:
            value = np.asarray(array.numpy())
        except Exception as error:  # noqa: BLE001 - any decoding failure is the client's fault
            raise RefusedReply(f"{name} cannot be decoded: {error}") from error
        if value.shape != tuple(shape) or str(value.dtype) != expected_dtype:
            raise RefusedReply(f"{name} decodes to {value.dtype} {value.shape}, must be {expected_dtype} {tuple(shape)}.")
        if not np.isfinite(value).all():
            raise RefusedReply(f"{name} holds NaN or inf.")
        tensor = torch.from_numpy(value.copy())
        if not math.isinf(bound):
            norm = float(torch.linalg.vector_norm(tensor))
            if norm > bound * (1 + NORM_SLACK):
                raise RefusedReply(f"{name} has L2 norm {norm:.6g}, above its clipping bound {bound:g}.")
        tensors[name] = tensor
    return tensors
