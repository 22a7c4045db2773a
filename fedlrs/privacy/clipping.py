"""Per-user clipping: every user's contribution is scaled to L2 norm <= C.

Batched over a leading user dimension, any device and dtype. Clipping bounds
the user-level L2 sensitivity of a sum of contributions by C (add/remove one
user), which is what the Gaussian mechanism's noise is calibrated to.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def _require_bound(name: str, bound: float) -> float:
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound) \
            or bound <= 0:
        raise ValueError(f"{name} == {bound!r}, must be a finite number > 0.")
    return float(bound)


def flat_norms(t: Tensor) -> Tensor:
    """``||t_i||_2`` over all but the leading (user) dimension: shape (n,)."""
    if t.dim() < 1:
        raise ValueError(f"t has shape {tuple(t.shape)}, must have a leading user dimension.")
    return torch.linalg.vector_norm(t.reshape(t.shape[0], t[0].numel() if t.shape[0] else 0), dim=1)  # no -1: zero users are a shape too


def clip_scales(norms: Tensor, *, bound: float) -> Tensor:
    """Per-user factors ``s_i = min(1, C / ||x_i||)`` (``s_i = 1`` for ``||x_i|| = 0``).

    ``s_i ||x_i|| <= C`` always; contributions already inside the ball are untouched.
    """
    bound = _require_bound("bound", bound)
    if torch.any(norms < 0) or not torch.all(torch.isfinite(norms)):
        raise ValueError("norms must be finite and >= 0.")
    bound_t = torch.full_like(norms, bound)
    # tensor / tensor: a Python scalar / tensor computes (1 / t) * scalar, which is not exact
    return torch.where(norms > bound, bound_t / torch.where(norms > bound, norms, bound_t),
                       torch.ones_like(norms))


def clip(t: Tensor, *, bound: float) -> tuple[Tensor, Tensor]:
    """``(s_i x_i, s_i)``: each user's contribution scaled to L2 norm <= C (see :func:`clip_scales`)."""
    scales = clip_scales(flat_norms(t), bound=bound)
    return t * scales.reshape(-1, *([1] * (t.dim() - 1))), scales


def ls_part_norms(W: Tensor, xtx: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Frobenius norms of the two "ls" contributions, never forming them: ``(norm_A, norm_c)``.

    With ``S_i = X_i^T X_i`` (``xtx``, (n, d, d)), ``w_i`` (``W``, (n, r)) and
    ``g_i = X_i^T (y_i - X_i b_i)`` (``g``, (n, d)):

    * ``A_i = (w_i w_i^T) kron S_i`` has ``||A_i||_F = ||w_i w_i^T||_F ||S_i||_F
      = ||w_i||^2 ||S_i||_F`` (the Frobenius norm is multiplicative over kron);
    * ``c_i = vec(g_i w_i^T)`` has ``||c_i|| = ||g_i|| ||w_i||`` (rank one).
    """
    if W.dim() != 2 or xtx.dim() != 3 or g.dim() != 2 or not (W.shape[0] == xtx.shape[0] == g.shape[0]) \
            or xtx.shape[1:] != (g.shape[1], g.shape[1]):
        raise ValueError(f"W, xtx, g have shapes {tuple(W.shape)}, {tuple(xtx.shape)}, {tuple(g.shape)};"
                         f" must be (n, r), (n, d, d), (n, d).")
    w_norm = torch.linalg.vector_norm(W, dim=1)
    norm_A = w_norm.square() * flat_norms(xtx)
    norm_c = torch.linalg.vector_norm(g, dim=1) * w_norm
    return norm_A, norm_c


def ls_part_scales(W: Tensor, xtx: Tensor, g: Tensor, *, bound_A: float,
                   bound_c: float) -> tuple[Tensor, Tensor]:
    """Clipping factors ``(s_A, s_c)`` of the "ls" parts, each to its own bound (C_A, C_c).

    ``s_A,i = min(1, C_A / ||A_i||_F)`` and ``s_c,i = min(1, C_c / ||c_i||)``, norms
    from :func:`ls_part_norms`. The release of both is accounted with
    ``accounted_noise_multiplier(noise_std_multiplier=sigma, parts=2)``.
    """
    norm_A, norm_c = ls_part_norms(W, xtx, g)
    return clip_scales(norm_A, bound=bound_A), clip_scales(norm_c, bound=bound_c)


#: bound of the unit-free "ls" part ``c_i / ||A_i||_F``: noiseless, ``g_i = S_i U w_i`` and
#: ``||c_i|| = ||S_i U w_i|| ||w_i|| <= ||S_i||_F ||w_i||^2 = ||A_i||_F``, so 1 clips only label noise and a poor U
LS_UNIT_FREE_C_BOUND = 1.0


def ls_unit_free_scales(W: Tensor, xtx: Tensor, g: Tensor, *, bound_c: float = LS_UNIT_FREE_C_BOUND) -> tuple[Tensor, Tensor]:
    """Scales ``(s_A, s_c)`` of the unit-free "ls" parts: each user sends ``A_i / ||A_i||_F`` (bound 1) and
    ``c_i / ||A_i||_F`` clipped to ``bound_c``.

    ``s_A,i = 1 / ||A_i||_F`` (0 when ``A_i = 0``) and ``s_c,i = s_A,i min(1, C_c / (s_A,i ||c_i||))``, norms from
    :func:`ls_part_norms`. Both parts are ratios of the user's own statistics, so they do not change when X or y
    change units; each user's normal equations are weighted by ``1 / ||A_i||_F``, which keeps their solution.
    """
    norm_A, norm_c = ls_part_norms(W, xtx, g)
    positive = norm_A > 0
    s_A = torch.where(positive, 1 / torch.where(positive, norm_A, torch.ones_like(norm_A)), torch.zeros_like(norm_A))
    return s_A, s_A * clip_scales(s_A * norm_c, bound=bound_c)


def ls_private_scales(W: Tensor, xtx: Tensor, g: Tensor, *, unit_free: bool, bound_A: float, bound_c: float) -> dict[str, Tensor]:
    """``{"weights_A": s_A, "weights_c": s_c}`` of a private "ls" contribution (:func:`fedlrs.core.ls_system`'s weights):
    unit-free (:func:`ls_unit_free_scales`) or each part clipped to its fixed bound (:func:`ls_part_scales`)."""
    if unit_free:
        s_A, s_c = ls_unit_free_scales(W, xtx, g)
    else:
        s_A, s_c = ls_part_scales(W, xtx, g, bound_A=bound_A, bound_c=bound_c)
    return {"weights_A": s_A, "weights_c": s_c}
