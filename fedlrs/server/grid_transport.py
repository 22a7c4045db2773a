"""Flower's Grid as a transport of the one round loop (:mod:`fedlrs.tasks.loop`): the billboard's nodes are the users.

``collect`` sends one message per sampled node (or runs a SecAgg+ cohort) through the billboard's
own messaging (:meth:`fedlrs.server.billboard.Billboard._collect`: replies validated against the
contribution spec, refused and missing ones logged and skipped, a fixed summing order). User i of
the loop's sample is the i-th connected node in increasing id order (the engine's convention,
:func:`fedlrs.privacy.sampling.sample_nodes`); the nodes are read again at the start of each round.
Under SecAgg+ the moments init and the rounds are released by the secure aggregation
(:meth:`fedlrs.server.secure_aggregation.SecureAggregation.release`, same ledger, same PrivateServer).
"""

from __future__ import annotations

import torch

from fedlrs.tasks.base import ROUND, USERS, Sums, count
from fedlrs.tasks.linear import clip_center


class GridTransport:
    """The nodes of ``grid`` behind ``billboard`` (a :class:`~fedlrs.server.billboard.Billboard`), starting with ``nodes``."""

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
