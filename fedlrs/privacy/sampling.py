"""Poisson sampling of users (and of a Flower run's nodes): the sampling the accountants' amplification assumes.

One draw, :func:`poisson_sample`; the engine, the network loop, the billboards and the baselines sample through it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def poisson_sample(num_users: int, *, sample_rate: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool mask (num_users,): user i takes part independently with probability q.

    ``mask_i ~ Bernoulli(q)`` i.i.d., so the number of participants is
    Binomial(N, q) and private (normalise by the expected count ``q N``, never by
    ``mask.sum()``). This is the sampling of Mironov, Talwar & Zhang 2019;
    fixed-size sampling would need another analysis. ``generator`` (CPU) makes
    it reproducible; without one, a fresh generator is seeded from OS entropy.
    """
    if isinstance(num_users, bool) or not isinstance(num_users, int) or num_users < 0:
        raise ValueError(f"num_users == {num_users!r}, must be an integer >= 0.")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) \
            or not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate == {sample_rate!r}, must be in (0, 1].")
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    return torch.rand(num_users, generator=generator, dtype=torch.float64) < sample_rate


def sample_users(num_users: int, sample_rate: float, generator: torch.Generator, device) -> torch.Tensor | None:
    """Indices of the users in this round: each independently with probability q (Poisson sampling).

    ``q = 1`` takes everybody without drawing and returns None (all users, no index copy);
    otherwise one :func:`poisson_sample` draw, as indices on ``device``.
    """
    if sample_rate >= 1:
        return None
    chosen = poisson_sample(num_users, sample_rate=sample_rate, generator=generator)
    return chosen.nonzero().squeeze(-1).to(device)


def sample_nodes(node_ids: Iterable[int], sample_rate: float, generator: torch.Generator) -> list[int]:
    """The node ids taking part in this round: :func:`sample_users` over the nodes in increasing id order.

    User i of the in-process engine is the i-th node in increasing node-id order, so the
    same seed samples the same positions in both.
    """
    nodes = sorted(int(n) for n in node_ids)
    chosen = sample_users(len(nodes), sample_rate, generator, "cpu")
    return nodes if chosen is None else [nodes[i] for i in chosen.tolist()]
