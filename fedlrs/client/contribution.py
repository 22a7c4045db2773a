"""What a device computes and sends: its clipped contribution, and nothing else (DESIGN.md 2-3).

No Flower here: tensors in, tensors out. What a device computes is the linear task's client step
(:mod:`fedlrs.tasks.linear`, the engine's, one implementation) for a batch of one user. The parts
and their bounds are the protocol's spec (:func:`fedlrs.protocol.parts.expected_parts`), which the
server validates replies against.

Phases:

* ``"moments"`` (private init): ``M_i = sum_j y_ij^2 x_ij x_ij^T`` (d, d), clipped to ``clip-moments``
  (with adaptive clipping ``M_i / ||M_i||_F``, bound 1).
* ``"clip"`` (the unit-free "gd" step, ``clip-quantile > 0``): the one-hot bin (K,) of the norm of the
  user's unit-free contribution (:mod:`fedlrs.privacy.adaptive`), bound 1.
* ``"round"`` in mode "ls": ``A_i`` (dr, dr) and ``c_i`` (dr), clipped to ``clip-a`` and ``clip-c`` (private with
  ``clip-quantile > 0``: ``A_i / ||A_i||_F`` and ``c_i / ||A_i||_F`` clipped to 1, :func:`fedlrs.privacy.ls_private_scales`);
  in mode "gd": ``G_i = e_i w_i^T`` (d, r), clipped to ``clip-g``; with the unit-free step
  ``G = Delta_i`` (d, r) clipped to the round's bound (sent by the server) and ``P = s_i P_i`` (r, r)
  (:func:`fedlrs.core.unit_free_gradients`, :func:`fedlrs.privacy.adaptive.clipped_round_parts`).

Outside private mode the bounds of "moments" and "ls"/raw "gd" parts are infinite (nothing is scaled).
"""

from __future__ import annotations

import math

import torch

from fedlrs.core import LeanUsers, LocalFit, UserData, UserStats
from fedlrs.federation_config import FederationConfig
from fedlrs.privacy.clipping import clip_scales
from fedlrs.protocol.parts import expected_parts
from fedlrs.tasks import linear
from fedlrs.tasks.base import USERS

Tensor = torch.Tensor


def clip_parts(parts: dict[str, Tensor], bounds: dict[str, float]) -> dict[str, Tensor]:
    """Each part scaled to L2 (Frobenius) norm at most its bound; an infinite bound leaves it as it is."""
    clipped = {}
    for name, value in parts.items():
        bound = bounds[name]
        if math.isinf(bound):
            clipped[name] = value
            continue
        scale = clip_scales(torch.linalg.vector_norm(value).reshape(1), bound=bound)[0]
        clipped[name] = value * scale
    return clipped


def _users(stats: UserStats) -> LeanUsers:
    return LeanUsers(None, stats)


def _one(sums: dict[str, Tensor]) -> dict[str, Tensor]:
    """A batch of one user's sums without the count: that user's contribution."""
    return {name: value for name, value in sums.items() if name != USERS}


def local_fit(U: Tensor, stats: UserStats, config: FederationConfig) -> LocalFit:
    """``w_i, b_i`` for the published ``U``: the linear task's batched local step (:func:`fedlrs.tasks.linear.local_fit`) for one user."""
    return linear.local_fit(config.engine_config(), U, _users(stats))


def round_contribution(U: Tensor, stats: UserStats, config: FederationConfig, bound: float | None = None) -> tuple[dict[str, Tensor], LocalFit]:
    """The clipped contribution of one user to the U update (:func:`fedlrs.tasks.linear.contribution_sums` for a batch of one),
    and the user's new ``w_i, b_i`` (kept locally); clipped again to the spec's bounds (a no-op but for rounding)."""
    engine = config.engine_config()
    if engine.unit_free and (bound is None or not bound > 0):
        raise ValueError(f"clip bound == {bound!r}: the unit-free step needs the round's bound (> 0) from the server.")
    users = _users(stats)
    fit = linear.local_fit(engine, U, users)
    parts = _one(linear.contribution_sums(engine, U, users, fit, bound))
    bounds = {name: part_bound for name, (_, part_bound) in expected_parts(config, "round", bound).items()}
    return clip_parts(parts, bounds), fit


def moments_contribution(data: UserData, config: FederationConfig) -> dict[str, Tensor]:
    """The clipped ``M_i`` of one user for the method-of-moments init (:func:`fedlrs.tasks.linear.moment_partial_sums`:
    ``M_i / ||M_i||_F`` with unit-free parts), clipped again to the spec's bound."""
    bounds = {name: bound for name, (_, bound) in expected_parts(config, "moments").items()}
    return clip_parts(_one(linear.moment_partial_sums(config.engine_config(), data)), bounds)


def clip_contribution(U: Tensor, stats: UserStats, config: FederationConfig, center: float | None) -> dict[str, Tensor]:
    """The one-hot bin of the norm of the user's unit-free contribution for ``U`` on the grid around ``center``, the server's
    previous bound (:func:`fedlrs.tasks.linear.clip_partial_sums` for a batch of one)."""
    if center is None or not 0 < center < math.inf:
        raise ValueError(f"clip bound == {center!r}: the clip phase needs the center of its grid (> 0) from the server.")
    return _one(linear.clip_partial_sums(config.engine_config(), U, _users(stats), None, center))
