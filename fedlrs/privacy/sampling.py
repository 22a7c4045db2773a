"""Poisson sampling of users: the sampling the accountants' amplification assumes."""

from __future__ import annotations

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
