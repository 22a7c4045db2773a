"""AMHT-LRS's server side, shared by the in-process engine and the Flower billboard (one implementation).

The releases take their parts from the contribution spec (:func:`fedlrs.protocol.parts.linear_parts`:
the bounds the devices clip to, and which parts are symmetric) and go through the one release
sequence of :class:`fedlrs.privacy.release.PrivateServer`; :func:`server_step` turns the released
sums into the new ``U`` (DESIGN.md section 2).
"""

from __future__ import annotations

import torch

from fedlrs.core import averaging_step, gd_step, ls_solve, preconditioned_step
from fedlrs.privacy import DpEvent, GaussianSumRelease
from fedlrs.privacy.adaptive import part_noise_weights, shrink_released_curvature, shrink_released_mean
from fedlrs.privacy.release import PrivateServer
from fedlrs.protocol.parts import linear_parts
from fedlrs.simulations.engine_config import EngineConfig

Tensor = torch.Tensor


def release_init(private: PrivateServer, moment_sum: Tensor, num_users: int) -> Tensor:
    """The private moments init: ``(sum_i s_i M_i + E) / N``, symmetric ``E`` (the spec's part ``M``), recorded as ``"init"`` (q = 1)."""
    parts = linear_parts(private.config, "moments", moment_sum.shape[-1])
    return private.release_parts({"M": moment_sum}, private.event("init", 0), parts, float(num_users))["M"]


def release_clip(private: PrivateServer, histogram: dict[str, Tensor], event: DpEvent, expected_count: float) -> dict[str, Tensor]:
    """Release a clip histogram (the spec's part ``H``, sensitivity 1) over ``q N``: the noised fractions of users in each bin."""
    return private.release_parts(histogram, event, linear_parts(private.config, "clip", 0), expected_count)


def release_round(private: PrivateServer, sums: dict[str, Tensor], event: DpEvent, expected_count: float, dim: int,
                  bound: float | None = None) -> dict[str, Tensor]:
    """A round's sums noised for the spec's clipping bounds, over ``q N`` ("ls": ``A`` symmetric and ``c``; "gd": ``G``;
    with adaptive clipping ``G`` at the round's ``bound`` and ``P`` symmetric, both shrunk after the release)."""
    parts = linear_parts(private.config, "round", dim, bound)
    if not private.config.adaptive:
        return private.release_parts(sums, event, parts, expected_count)
    weights = part_noise_weights([p.name for p in parts])
    released = private.release_parts(sums, event, parts, expected_count, weights)
    stds = GaussianSumRelease(noise_multiplier=event.noise_multiplier, bounds={p.name: p.bound for p in parts}, expected_count=expected_count,
                              noise=private.noise, noise_weights=weights).noise_stds()
    return {"G": shrink_released_mean(released["G"], noise_std=stds["G"] / expected_count),
            "P": shrink_released_curvature(released["P"], noise_std=stds["P"] / expected_count)}


def server_step(config: EngineConfig, U: Tensor, sums: dict[str, Tensor], normalizer: float, round_number: int = 1) -> Tensor:
    """The new ``U`` from the (released) sums: "ls" solves ``A vec(U) = c``, "gd" takes a gradient step (unit-free: preconditioned by ``P``); all over ``normalizer``."""
    if config.mode == "ls":
        return ls_solve(sums["A"], sums["c"], rank=config.rank, normalizer=normalizer, ridge=config.ridge_u)
    if config.unit_free:
        rate = config.gd_learning_rate * averaging_step(round_number, config.rounds)
        return preconditioned_step(U, sums["G"], sums["P"], normalizer=normalizer, learning_rate=rate)
    return gd_step(U, sums["G"], normalizer=normalizer, learning_rate=config.gd_learning_rate)
