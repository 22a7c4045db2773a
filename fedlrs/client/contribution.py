"""What a device computes and sends: its clipped contribution, and nothing else (DESIGN.md 2-3).

No Flower here: tensors in, tensors out. The parts and their bounds are the protocol's spec
(:func:`fedlrs.protocol.parts.expected_parts`), which the server validates replies against.

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

from fedlrs.core import (
    LocalFit,
    UserData,
    UserStats,
    gd_gradient_sum,
    gd_residual_vectors,
    ls_part_vectors,
    ls_system,
    moment_sum,
    solve_local,
)
from fedlrs.core import unit_free_gradients
from fedlrs.federation_config import FederationConfig
from fedlrs.privacy.adaptive import clip_histogram, clipped_round_parts, relative_grid
from fedlrs.privacy.clipping import clip_scales, ls_private_scales
from fedlrs.protocol.parts import expected_parts

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


def local_fit(U: Tensor, stats: UserStats, config: FederationConfig) -> LocalFit:
    """``w_i, b_i`` for the published ``U`` (:func:`fedlrs.core.solve_local`, the engine's local step)."""
    return solve_local(U, stats, sparsity=config.sparsity, ridge_w=config.ridge_w, ridge_b=config.ridge_b,
                       refine_steps=config.refine_steps, starts=config.starts)


def round_contribution(U: Tensor, stats: UserStats, config: FederationConfig, bound: float | None = None) -> tuple[dict[str, Tensor], LocalFit]:
    """The clipped contribution of one user to the U update, and the user's new ``w_i, b_i`` (kept locally)."""
    fit = local_fit(U, stats, config)
    if config.engine_config().unit_free:
        if bound is None or not bound > 0:
            raise ValueError(f"clip bound == {bound!r}: the unit-free step needs the round's bound (> 0) from the server.")
        delta, curvature = unit_free_gradients(stats, U, fit.w, fit.b)
        return clipped_round_parts(delta, curvature, bound=bound)[0], fit
    if config.mode == "ls":
        engine = config.engine_config()
        weights = {} if not engine.private else ls_private_scales(fit.w, stats.xtx, ls_part_vectors(stats, fit.b), unit_free=engine.unit_free_ls,
                                                                 bound_A=engine.clip_a, bound_c=engine.clip_c)
        A, c = ls_system(stats, fit.w, fit.b, **weights)
        parts = {"A": A, "c": c}
    else:
        parts = {"G": gd_gradient_sum(gd_residual_vectors(stats, U, fit.w, fit.b), fit.w)}
    bounds = {name: bound for name, (_, bound) in expected_parts(config, "round").items()}
    return clip_parts(parts, bounds), fit


def moments_contribution(data: UserData, config: FederationConfig) -> dict[str, Tensor]:
    """The clipped ``M_i`` of one user for the method-of-moments init (with adaptive clipping ``M_i / ||M_i||_F``)."""
    M = moment_sum(data)
    if config.engine_config().unit_free_init:
        norm = torch.linalg.vector_norm(M)
        return {"M": M / norm if norm > 0 else M}
    bounds = {name: bound for name, (_, bound) in expected_parts(config, "moments").items()}
    return clip_parts({"M": M}, bounds)


def clip_contribution(U: Tensor, stats: UserStats, config: FederationConfig, center: float | None) -> dict[str, Tensor]:
    """The one-hot bin of the norm of the user's unit-free contribution for ``U`` on the grid around ``center``, the server's
    previous bound (:func:`fedlrs.privacy.adaptive.relative_grid`, :func:`fedlrs.privacy.adaptive.clip_histogram`)."""
    if center is None or not 0 < center < math.inf:
        raise ValueError(f"clip bound == {center!r}: the clip phase needs the center of its grid (> 0) from the server.")
    fit = local_fit(U, stats, config)
    delta, _ = unit_free_gradients(stats, U, fit.w, fit.b)
    return clip_histogram(delta, relative_grid(center, dtype=delta.dtype))
