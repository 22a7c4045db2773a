"""Poisson sampling of the connected nodes, with the engine's random-number convention.

User i of the engine is the i-th node in increasing node-id order; one
``torch.rand(N, generator=...)`` per round when q < 1 (:func:`fedlrs.simulations.engine.sample_users`),
so the same seed samples the same positions in both.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from fedlrs.simulations.engine import sample_users


def poisson_sample(node_ids: Iterable[int], sample_rate: float, generator: torch.Generator) -> list[int]:
    """The node ids taking part in this round: each independently with probability ``sample_rate``."""
    nodes = sorted(int(n) for n in node_ids)
    chosen = sample_users(len(nodes), sample_rate, generator, "cpu")
    return nodes if chosen is None else [nodes[i] for i in chosen.tolist()]
