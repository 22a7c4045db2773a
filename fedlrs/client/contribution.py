"""What a device computes and sends: its clipped contribution, and nothing else (DESIGN.md 2-3).

No Flower here: tensors in, tensors out. The parts and their bounds are the protocol's spec
(:func:`fedlrs.protocol.parts.expected_parts`), which the server validates replies against.

Phases:

* ``"moments"`` (private init): ``M_i = sum_j y_ij^2 x_ij x_ij^T`` (d, d), clipped to ``clip-moments``.
* ``"round"`` in mode "ls": ``A_i`` (dr, dr) and ``c_i`` (dr), clipped to ``clip-a`` and ``clip-c``;
  in mode "gd": ``G_i = e_i w_i^T`` (d, r), clipped to ``clip-g``.

Outside private mode the bounds are infinite (nothing is scaled).
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
    ls_system,
    moment_sum,
    solve_local,
)
from fedlrs.federation_config import FederationConfig
from fedlrs.privacy.clipping import clip_scales
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


def round_contribution(U: Tensor, stats: UserStats, config: FederationConfig) -> tuple[dict[str, Tensor], LocalFit]:
    """The clipped contribution of one user to the U update, and the user's new ``w_i, b_i`` (kept locally)."""
    fit = local_fit(U, stats, config)
    if config.mode == "ls":
        A, c = ls_system(stats, fit.w, fit.b)
        parts = {"A": A, "c": c}
    else:
        parts = {"G": gd_gradient_sum(gd_residual_vectors(stats, U, fit.w, fit.b), fit.w)}
    bounds = {name: bound for name, (_, bound) in expected_parts(config, "round").items()}
    return clip_parts(parts, bounds), fit


def moments_contribution(data: UserData, config: FederationConfig) -> dict[str, Tensor]:
    """The clipped ``M_i`` of one user for the method-of-moments init."""
    bounds = {name: bound for name, (_, bound) in expected_parts(config, "moments").items()}
    return clip_parts({"M": moment_sum(data)}, bounds)
