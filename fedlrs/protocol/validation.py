"""Validation of a device's reply: it must be exactly the contribution the protocol allows.

A reply is refused (and the round goes on without it) when it carries an error, holds any
record but the ArrayRecord ``contribution``, misses or adds an array, has the wrong shape or
dtype, holds NaN/inf, or a part whose L2 norm is above its clipping bound. (That it comes
from a node that was asked, once, is the server's check: :mod:`fedlrs.server.billboard`.)
No Flower import: the reply is read through the Message's attributes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fedlrs.protocol.messages import CONTRIBUTION

#: relative slack on the clipping bound for the rounding of the client's scaling
NORM_SLACK = 1e-9


class RefusedReply(ValueError):
    """A reply that does not meet the protocol; the message says why."""


def validate_reply(reply: Any, parts: dict[str, tuple[tuple[int, ...], float]], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The reply's parts as tensors, or :class:`RefusedReply` with the reason.

    ``reply`` is a Flower ``Message`` (read through its ``has_error``, ``error`` and ``content``);
    ``parts`` is ``{name: (shape, bound)}`` from :func:`fedlrs.protocol.parts.expected_parts`.
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


def require_one_hot(name: str, value: torch.Tensor) -> None:
    """Refuse a histogram part that is not exactly one-hot (one entry 1, the others 0), as
    :func:`fedlrs.privacy.adaptive.norm_bins` makes it: :class:`RefusedReply` otherwise."""
    ones, zeros = int((value == 1).sum()), int((value == 0).sum())
    if ones != 1 or ones + zeros != value.numel():
        raise RefusedReply(f"{name} must be one-hot (one entry 1, the others 0), has {ones} ones and "
                           f"{value.numel() - ones - zeros} entries neither 0 nor 1.")
